"""Checkpoints of a TrainState: saved and restored exactly, the last k and the best kept, the
metadata beside them, a directory of another model or split refused, and a corrupted checkpoint
skipped for the one before it."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn import checkpoint
from jaxunlearn.checkpoint import CheckpointManager
from jaxunlearn.state import TrainState
from tests.conftest import train_epoch

TX = optax.sgd(0.1, momentum=0.9)


def _state(step, value=0.0):
  params = {'dense': {'kernel': jnp.full((2, 3), value), 'bias': jnp.arange(3.0) + value}}
  opt_state = TX.init(params)
  opt_state = jax.tree.map(lambda x: x + value if x.dtype == jnp.float32 else x, opt_state)
  return TrainState(
    step=jnp.asarray(step, jnp.int32),
    params=params,
    batch_stats={'mean': jnp.ones(3) * value},
    opt_state={'main': opt_state},
  )


def _steps_on_disk(directory):
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_model_signature_is_paths_and_shapes():
  params = {'conv': {'kernel': np.zeros((3, 3, 1, 8))}, 'head': {'bias': np.zeros(10)}}
  assert checkpoint.model_signature(params) == {
    "['conv']['kernel']": [3, 3, 1, 8],
    "['head']['bias']": [10],
  }
  wider = {'conv': {'kernel': np.zeros((3, 3, 1, 16))}, 'head': {'bias': np.zeros(10)}}
  assert checkpoint.model_signature(wider) != checkpoint.model_signature(params)


def test_a_saved_state_restores_exactly_with_its_metadata(tmp_path):
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=2, meta={'model': 'cnn'})
  assert [manager.should_save(step) for step in range(1, 5)] == [False, True, False, True]
  saved = _state(2, value=0.25)
  manager.save(saved, {'test_accuracy': 0.5})
  manager.wait()
  assert manager.latest_step() == 2
  _assert_same(manager.restore(2, _state(0)), saved)
  _assert_same(manager.restore_latest(_state(0)), saved)
  expected_meta = {'model': 'cnn', 'step': 2, 'metrics': {'test_accuracy': 0.5}}
  assert manager.restore_meta(2) == expected_meta
  assert manager.restore_meta() == expected_meta
  assert checkpoint.read_meta(str(tmp_path / 'ckpt')) == expected_meta
  manager.close()


def test_no_checkpoint_every_zero_steps_and_nothing_to_read(tmp_path):
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=0)
  assert not any(manager.should_save(step) for step in range(1, 10))
  assert manager.latest_step() is None
  assert manager.restore_latest(_state(0)) is None
  assert manager.restore_meta() is None
  manager.close()
  assert checkpoint.read_meta(str(tmp_path / 'ckpt')) is None  # made, but empty
  assert checkpoint.read_meta(str(tmp_path / 'missing')) is None


@pytest.mark.parametrize('best_metric, kept', [(None, [4, 5]), ('test_accuracy', [2, 4, 5])])
def test_the_last_k_and_the_best_are_kept(tmp_path, best_metric, kept):
  directory = str(tmp_path / 'ckpt')
  manager = CheckpointManager(directory, every_steps=1, keep=2, best_metric=best_metric)
  for step, accuracy in zip(range(1, 6), [0.5, 0.9, 0.6, 0.7, 0.65]):
    manager.save(_state(step, value=step), {'test_accuracy': accuracy})
  manager.wait()
  assert _steps_on_disk(directory) == kept
  assert manager.latest_step() == 5
  if best_metric:
    assert manager.best_step() == 2
    _assert_same(manager.restore(2, _state(0)), _state(2, value=2))
  manager.close()


def test_a_directory_of_another_model_or_split_is_refused(tmp_path):
  directory = str(tmp_path / 'ckpt')
  signature = {"['head']['kernel']": [16, 10]}
  meta = {'model': 'cnn', 'model_signature': signature, 'split_digest': 'abc'}
  checkpoint.check_compatible(directory, meta, '--config.workdir')  # nothing there yet
  manager = CheckpointManager(directory, every_steps=1, meta=meta)
  manager.save(_state(1), {})
  manager.close()
  checkpoint.check_compatible(directory, meta, '--config.workdir')
  checkpoint.check_compatible(directory, {**meta, 'seed': 3}, '--config.workdir')  # not in meta
  with pytest.raises(ValueError) as error:
    checkpoint.check_compatible(
      directory, {**meta, 'model_signature': {"['head']['kernel']": [32, 10]}}, '--config.workdir'
    )
  assert str(error.value) == (
    f'--config.workdir: checkpoint directory {directory} was written for a different '
    'model_signature: the parameter shapes differ. Use another workdir or delete it.'
  )
  with pytest.raises(ValueError) as error:
    checkpoint.check_compatible(directory, {**meta, 'split_digest': 'def'}, '--config.out')
  assert str(error.value) == (
    f'--config.out: checkpoint directory {directory} was written for a different '
    "split_digest: it holds 'abc', the run asks for 'def'. Use another workdir or delete it."
  )


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(tiny_experiment, tmp_path, capfd):
  full = train_epoch(tiny_experiment)
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=5, keep=2)
  train_epoch(tiny_experiment, checkpointer=manager, stop_after=12)
  manager.wait()
  assert _steps_on_disk(tmp_path / 'ckpt') == [5, 10]
  latest = tmp_path / 'ckpt' / '10'
  for path in glob.glob(str(latest / '**' / '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'r+b') as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))
  resumed = train_epoch(tiny_experiment, checkpointer=manager)
  manager.close()
  err = capfd.readouterr().err
  assert f'checkpoint {latest} cannot be read' in err and 'falling back' in err
  assert resumed.steps_run == len(tiny_experiment.train.sources['all']) // 64 + 1 - 5
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(full.state.params),
    jax.device_get(resumed.state.params),
  )
