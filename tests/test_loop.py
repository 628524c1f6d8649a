"""The shared loop: sampling, sharded == unsharded, compile-once, resumption, steps in flight."""

import os
import subprocess
import sys

import jax
import numpy as np

from jaxunlearn import loop, sharding
from jaxunlearn.checkpoint import CheckpointManager
from jaxunlearn.data.device import BatchSampler
from jaxunlearn.loop import Program, StepKind
from tests.conftest import train_epoch


def test_sampler_covers_each_example_once_per_epoch():
  positions = np.arange(100, 137)
  sampler = BatchSampler(positions, 8, seed=3, source='forget')
  assert sampler.batches_per_epoch == 5
  seen = []
  for draw in range(5):
    idx, weight = sampler.batch(draw)
    assert idx.shape == (8,) and weight.shape == (8,)
    seen += list(idx[weight > 0])
  assert sorted(seen) == list(positions)
  assert sampler.batch(4)[1].sum() == 37 - 32  # the padded tail
  again = BatchSampler(positions, 8, seed=3, source='forget')
  np.testing.assert_array_equal(again.batch(7)[0], sampler.batch(7)[0])
  assert not np.array_equal(sampler.batch(5)[0], sampler.batch(0)[0])  # reshuffled epochs


def test_sharded_equals_unsharded(tiny_experiment):
  assert jax.device_count() == 8, 'run the tests with 8 forced host devices'
  one = train_epoch(tiny_experiment, mesh=sharding.make_mesh(jax.devices()[:1]), steps=6)
  eight = train_epoch(tiny_experiment, mesh=sharding.make_mesh(), steps=6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
    jax.device_get(one.state.params),
    jax.device_get(eight.state.params),
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
    jax.device_get(one.state.opt_state),
    jax.device_get(eight.state.opt_state),
  )


def test_compiles_once_per_step_kind(tiny_experiment):
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: (
      compiles.append(name) if name == '/jax/core/compile/backend_compile_duration' else None
    )
  )
  mesh = sharding.make_mesh()
  train_epoch(
    tiny_experiment, mesh=mesh, steps=1
  )  # a first run in the process also compiles one-time helpers
  compiles.clear()
  train_epoch(tiny_experiment, mesh=mesh, steps=2)
  short = len(compiles)
  compiles.clear()
  train_epoch(tiny_experiment, mesh=mesh, steps=12)
  assert len(compiles) == short  # 10 more steps, not one more compilation


def test_resume_after_stop_gives_same_final_params(tiny_experiment, tmp_path):
  mesh = sharding.make_mesh()
  full = train_epoch(tiny_experiment, mesh=mesh)
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=5, keep=2)
  partial = train_epoch(tiny_experiment, mesh=mesh, checkpointer=manager, stop_after=8)
  assert partial.steps_run == 8 and manager.latest_step() == 5
  resumed = train_epoch(tiny_experiment, mesh=mesh, checkpointer=manager)
  assert resumed.steps_run == len(tiny_experiment.train.sources['all']) // 64 + 1 - 5
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(full.state.params),
    jax.device_get(resumed.state.params),
  )
  manager.close()


class _Loss(float):
  """A step's loss that records when the host waits for it."""

  def __new__(cls, step, waited):
    loss = super().__new__(cls, 0.0)
    loss.step, loss.waited = step, waited
    return loss

  def block_until_ready(self):
    self.waited.append(self.step)
    return self


def test_host_loop_bounds_the_steps_in_flight():
  waited, ahead = [], []
  program = Program({'k': StepKind(fn=None, slots={})}, ['k'] * 40, batch_size=1)

  def execute(kind_name, state, batch):
    ahead.append(state - (max(waited) + 1 if waited else 0))
    return state + 1, {'loss': _Loss(state, waited)}

  state, *_ = loop._host_loop(
    program, 0, 0, lambda kind: {}, execute, examples_per_slot=1, log_every=1000, name='t'
  )
  assert state == 40
  assert waited == list(range(40 - loop.MAX_STEPS_IN_FLIGHT))  # each in turn, once
  assert max(ahead) == loop.MAX_STEPS_IN_FLIGHT


def test_progress_counts_every_batch_slot_of_a_step(monkeypatch):
  kinds = {
    'two': StepKind(fn=None, slots={'remain': 'retain', 'forget': 'forget'}),
    'one': StepKind(fn=None, slots={'remain': 'retain'}),
  }
  program = Program(kinds, ['two', 'one', 'two', 'one', 'one'], batch_size=8)
  counted = []

  def summarise(pending, done, total, seconds, examples, elapsed, steps_run):
    counted.append(examples)
    return {'step': done, 'examples_per_s': 0.0, 'eta_s': 0.0}

  monkeypatch.setattr(loop, '_summarise', summarise)
  loop._host_loop(
    program,
    0,
    0,
    lambda kind: {},
    lambda k, s, b: (s + 1, {}),
    examples_per_slot=8,
    log_every=4,
    name='t',
  )
  assert counted == [(2 + 1 + 2 + 1) * 8, 8]  # two two-slot and two one-slot steps, then one


_MANY_STEPS = """
import sys
import jax
import numpy as np
from jaxunlearn import experiment, loop, sharding
from jaxunlearn.train import create_state, supervised_program
from tests.conftest import tiny_config

loop.MAX_STEPS_IN_FLIGHT = int(sys.argv[3])
config = tiny_config(sys.argv[1], sys.argv[2], num_devices=2, dataset='mnist5k', batch_size=128)
config.model_kwargs.update(channels=(32, 64), dense_width=128)  # the main job's CNN
setup = experiment.prepare(config)
fns, variables = setup.model(0)
program, txs = supervised_program(
  fns, setup.training.optimizer, num_examples=len(setup.train.sources['all']), batch_size=128,
  epochs=12, source='all')
result = loop.run(program, create_state(variables, txs), setup.train, mesh=setup.mesh, seed=0,
                  log_every=10000)
print('steps', result.steps_run)
"""


def test_data_parallel_cpu_run_does_not_abort_in_its_all_reduce(tmp_path, data_dir):
  """The main job's CNN for 384 steps, data parallel over 2 CPU devices, dispatched back to back.
  Unbounded, PjRt's CPU client blocked the dispatching thread at 32 computations in flight and
  the all-reduce's rendezvous aborted the process after 40 s."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  args = [sys.executable, '-c', _MANY_STEPS, str(tmp_path), data_dir]
  done = subprocess.run(
    args + [str(loop.MAX_STEPS_IN_FLIGHT)], env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0 and 'steps 384' in done.stdout, done.stdout + done.stderr[-3000:]
