"""The shared loop: sampling, sharded == unsharded, compile-once, resumption."""

import jax
import numpy as np
import pytest

from jaxunlearn import experiment, sharding
from jaxunlearn.checkpoint import CheckpointManager
from jaxunlearn.data.device import BatchSampler, DeviceData
from jaxunlearn.loop import run
from jaxunlearn.train import create_state, supervised_program
from tests.conftest import tiny_config


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


@pytest.fixture(scope='module')
def setup(tmp_path_factory, data_dir):
  return experiment.prepare(tiny_config(tmp_path_factory.mktemp('wd'), data_dir))


def _train(setup, mesh, steps=None, checkpointer=None, stop_after=None):
  fns, variables = setup.model(0)
  program, txs = supervised_program(
    fns,
    setup.training.optimizer,
    num_examples=len(setup.train.sources['all']),
    batch_size=64,
    epochs=1,
    source='all',
  )
  if steps is not None:
    program = program.__class__(program.kinds, program.schedule[:steps], program.batch_size)
  data = DeviceData.create(
    np.asarray(setup.train.images),
    np.asarray(setup.train.labels),
    setup.info,
    setup.train.sources,
    mesh,
  )
  return run(
    program,
    create_state(variables, txs),
    data,
    mesh=mesh,
    seed=0,
    checkpointer=checkpointer,
    log_every=1000,
    stop_after=stop_after,
  )


def test_sharded_equals_unsharded(setup):
  assert jax.device_count() == 8, 'run the tests with 8 forced host devices'
  one = _train(setup, sharding.make_mesh(jax.devices()[:1]), steps=6)
  eight = _train(setup, sharding.make_mesh(), steps=6)
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


def test_compiles_once_per_step_kind(setup):
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: (
      compiles.append(name) if name == '/jax/core/compile/backend_compile_duration' else None
    )
  )
  mesh = sharding.make_mesh()
  _train(setup, mesh, steps=2)
  short = len(compiles)
  compiles.clear()
  _train(setup, mesh, steps=12)
  assert len(compiles) == short  # 10 more steps, not one more compilation


def test_resume_after_stop_gives_same_final_params(setup, tmp_path):
  mesh = sharding.make_mesh()
  full = _train(setup, mesh)
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=5, keep=2)
  partial = _train(setup, mesh, checkpointer=manager, stop_after=8)
  assert partial.steps_run == 8 and manager.latest_step() == 5
  resumed = _train(setup, mesh, checkpointer=manager)
  assert resumed.steps_run == len(setup.train.sources['all']) // 64 + 1 - 5
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(full.state.params),
    jax.device_get(resumed.state.params),
  )
  manager.close()
