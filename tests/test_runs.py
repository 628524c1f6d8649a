"""The run store: fingerprints, a completed run reused only under its own fingerprint, checkpoints
of another run removed, the seconds a resumed run has spent, the study lock and the workdir
check."""

import collections
import json
import os
import socket
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest

import jaxunlearn
from jaxunlearn import runs
from jaxunlearn.config import ConfigError
from jaxunlearn.state import TrainState
from tests.conftest import tiny_study_config


def _variables():
  return {
    'params': {'dense': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)}},
    'batch_stats': {'mean': np.ones(3, np.float32)},
  }


def _state(step, scale=1.0):
  variables = _variables()
  return TrainState(
    step=jnp.asarray(step, jnp.int32),
    params={'dense': {'kernel': variables['params']['dense']['kernel'] * scale}},
    batch_stats=variables['batch_stats'],
    opt_state={},
  )


def _fingerprint(name='ft', **config):
  return runs.fingerprint({'method': name, 'config': config, 'seed': 0})


# --- fingerprints ---------------------------------------------------------------------------


def test_weights_digest_is_stable_and_sees_every_bit_shape_dtype_and_path():
  variables = _variables()
  digest = runs.weights_digest(variables)
  assert len(digest) == 64
  assert runs.weights_digest(_variables()) == digest
  on_device = {
    'params': {'dense': {'kernel': jnp.asarray(variables['params']['dense']['kernel'])}},
    'batch_stats': {'mean': jnp.asarray(variables['batch_stats']['mean'])},
  }
  assert runs.weights_digest(on_device) == digest
  kernel = variables['params']['dense']['kernel']
  changed = [
    np.nextafter(kernel, np.float32(np.inf)),  # one ulp
    kernel.reshape(3, 2),
    kernel.astype(np.float64),
  ]
  for other in changed:
    assert runs.weights_digest({**variables, 'params': {'dense': {'kernel': other}}}) != digest
  renamed = {**variables, 'params': {'head': {'kernel': kernel}}}
  assert runs.weights_digest(renamed) != digest


def test_fingerprint_ignores_key_order_and_sees_every_value():
  payload = {'method': 'ft', 'config': {'epochs': 1, 'lr': 0.01}, 'seed': 0}
  reordered = {'seed': 0, 'config': {'lr': 0.01, 'epochs': 1}, 'method': 'ft'}
  assert runs.fingerprint(payload) == runs.fingerprint(reordered)
  assert len(runs.fingerprint(payload)) == 64
  for other in (
    {**payload, 'seed': 1},
    {**payload, 'config': {'epochs': 2, 'lr': 0.01}},
    {**payload, 'config': {'epochs': 1, 'lr': 0.01, 'extra': None}},
    {**payload, 'method': 'ga'},
  ):
    assert runs.fingerprint(other) != runs.fingerprint(payload)


# --- completed runs -------------------------------------------------------------------------


def test_a_completed_run_is_found_only_under_its_own_fingerprint(tmp_path):
  store = runs.RunStore(str(tmp_path))
  fingerprint = _fingerprint(epochs=1)
  assert store.completed('ft', 0, fingerprint) is None
  store.save('ft', 0, fingerprint, 'ft-row', {'UA': 1.5}, _variables())
  directory = store.run_dir('ft', 0, fingerprint)
  assert directory == os.path.join(str(tmp_path), 'runs', f'ft_s0_{fingerprint[:16]}')
  assert store.completed('ft', 0, fingerprint) == {'UA': 1.5}
  with open(os.path.join(directory, runs.RUN_FILE)) as f:
    assert json.load(f) == {
      'method': 'ft',
      'first_row': 'ft-row',
      'seed': 0,
      'fingerprint': fingerprint,
      'scores': {'UA': 1.5},
    }
  assert store.completed('ft', 0, _fingerprint(epochs=2)) is None
  assert store.completed('ft', 1, fingerprint) is None
  # The same directory (first 16 hex digits) under another full fingerprint is not this run.
  same_prefix = fingerprint[:16] + ('0' if fingerprint[16] != '0' else '1') + fingerprint[17:]
  assert store.run_dir('ft', 0, same_prefix) == directory
  assert store.completed('ft', 0, same_prefix) is None


def test_saved_weights_restore_exactly_and_checkpoints_are_dropped(tmp_path):
  store = runs.RunStore(str(tmp_path))
  fingerprint = _fingerprint()
  checkpointer = store.checkpointer('ft', 0, fingerprint, 1, fresh=False)
  checkpointer.save(_state(1), {})
  checkpointer.close()
  directory = store.run_dir('ft', 0, fingerprint)
  assert os.path.isdir(os.path.join(directory, 'checkpoints'))
  variables = _variables()
  store.save('ft', 0, fingerprint, 'ft', {'UA': 0.0}, variables)
  assert sorted(os.listdir(directory)) == [runs.RUN_FILE, 'variables']
  restored = store.variables('ft', 0, fingerprint, like=variables)
  np.testing.assert_array_equal(
    restored['params']['dense']['kernel'], variables['params']['dense']['kernel']
  )
  np.testing.assert_array_equal(restored['batch_stats']['mean'], variables['batch_stats']['mean'])
  # A run without weights (the Original and Retrain rows) is its run.json alone.
  store.save('Original', 0, fingerprint, 'Original', {'UA': 2.0}, None)
  assert os.listdir(store.run_dir('Original', 0, fingerprint)) == [runs.RUN_FILE]


# --- checkpoints of interrupted runs --------------------------------------------------------


def _interrupted(store, fingerprint, step=2, in_directory_of=None):
  """Checkpoints of the run `fingerprint` at `step`, in the directory of `in_directory_of`."""
  directory = store.run_dir('sfron', 0, in_directory_of or fingerprint)
  checkpointer = runs.RunCheckpointer(os.path.join(directory, 'checkpoints'), 1, fingerprint)
  checkpointer.save(_state(step), {})
  checkpointer.close()
  return directory


def test_checkpoints_of_the_same_run_are_kept_for_its_resumption(tmp_path):
  store = runs.RunStore(str(tmp_path))
  fingerprint = _fingerprint('sfron')
  _interrupted(store, fingerprint, step=2)
  checkpointer = store.checkpointer('sfron', 0, fingerprint, 1, fresh=False)
  assert checkpointer.latest_step() == 2
  restored = checkpointer.restore_latest(_state(0, scale=0.0))
  checkpointer.close()
  assert int(restored.step) == 2
  np.testing.assert_array_equal(
    restored.params['dense']['kernel'], _state(2).params['dense']['kernel']
  )


def test_checkpoints_of_another_run_or_a_fresh_start_are_removed(tmp_path):
  store = runs.RunStore(str(tmp_path))
  fingerprint = _fingerprint('sfron')
  other = fingerprint[:16] + ('0' if fingerprint[16] != '0' else '1') + fingerprint[17:]
  directory = _interrupted(store, other, in_directory_of=fingerprint)  # same directory
  checkpointer = store.checkpointer('sfron', 0, fingerprint, 1, fresh=False)
  assert checkpointer.latest_step() is None
  checkpointer.close()
  _interrupted(store, fingerprint)
  checkpointer = store.checkpointer('sfron', 0, fingerprint, 1, fresh=True)  # rerun='all'
  assert checkpointer.latest_step() is None
  checkpointer.close()
  # Without checkpointing (every_steps 0) there is no checkpointer; another run's checkpoints
  # are removed all the same.
  _interrupted(store, fingerprint)
  assert store.checkpointer('sfron', 0, other, 0, fresh=False) is None
  assert not os.path.exists(directory)


def test_unreadable_checkpoints_are_removed(tmp_path):
  store = runs.RunStore(str(tmp_path))
  fingerprint = _fingerprint('sfron')
  garbage = os.path.join(store.run_dir('sfron', 0, fingerprint), 'checkpoints', '3')
  os.makedirs(garbage)
  with open(os.path.join(garbage, 'meta'), 'w') as f:
    f.write('not a checkpoint')
  checkpointer = store.checkpointer('sfron', 0, fingerprint, 1, fresh=False)
  assert checkpointer.latest_step() is None
  checkpointer.close()


def test_a_resumed_run_counts_the_seconds_of_its_earlier_part(tmp_path, monkeypatch):
  clock = iter([100.0, 107.0, 200.0, 203.0])
  monkeypatch.setattr(runs, 'time', types.SimpleNamespace(perf_counter=lambda: next(clock)))
  directory = str(tmp_path / 'checkpoints')
  first = runs.RunCheckpointer(directory, 1, 'f' * 64)  # starts at 100
  assert first.prior_seconds() == 0.0
  first.save(_state(1), {})  # at 107
  assert first.prior_seconds() == 0.0  # its own checkpoint is this part, not an earlier one
  first.close()
  second = runs.RunCheckpointer(directory, 1, 'f' * 64)  # starts at 200
  assert second.prior_seconds() == 7.0
  second.save(_state(2), {})  # at 203
  assert second.restore_meta()['seconds'] == 10.0
  assert second.prior_seconds() == 7.0
  assert second.restore_meta()['fingerprint'] == 'f' * 64
  second.close()


# --- the study lock -------------------------------------------------------------------------


def _hold(store, pid, host=None):
  os.makedirs(store.experiment_dir, exist_ok=True)
  with open(os.path.join(store.experiment_dir, 'study.lock'), 'w') as f:
    json.dump({'host': host or socket.gethostname(), 'pid': pid}, f)


def _finished_pid():
  """The pid of a process that has ended."""
  proc = subprocess.Popen([sys.executable, '-c', ''])
  proc.wait()
  return proc.pid


def test_the_lock_is_held_for_the_block_and_released_after_an_error(tmp_path):
  store = runs.RunStore(str(tmp_path / 'exp'))
  lock = os.path.join(store.experiment_dir, 'study.lock')
  with store.lock(), open(lock) as f:
    assert json.load(f) == {'host': socket.gethostname(), 'pid': os.getpid()}
  assert not os.path.exists(lock)
  with pytest.raises(RuntimeError, match='a run failed'), store.lock():
    raise RuntimeError('a run failed')
  assert not os.path.exists(lock)


@pytest.mark.parametrize('where', ['this host', 'another host'])
def test_a_second_study_is_refused_and_leaves_the_lock(tmp_path, where):
  store = runs.RunStore(str(tmp_path / 'exp'))
  # A live process on this host, or any process on another (whose liveness is unknown here).
  pid = os.getpid() if where == 'this host' else _finished_pid()
  host = None if where == 'this host' else 'elsewhere'
  _hold(store, pid, host)
  entered = []
  with pytest.raises(ConfigError) as error, store.lock():
    entered.append(True)
  message = str(error.value)
  assert message.startswith(
    f'--config.workdir: another study (pid {pid} on {host or socket.gethostname()}) is running '
    f'in {store.experiment_dir}'
  )
  assert '\n' not in message and not entered
  with open(os.path.join(store.experiment_dir, 'study.lock')) as f:
    assert json.load(f)['pid'] == pid  # the other study's lock stays


def test_a_stale_lock_of_this_host_is_taken_over(tmp_path):
  store = runs.RunStore(str(tmp_path / 'exp'))
  _hold(store, _finished_pid())
  lock = os.path.join(store.experiment_dir, 'study.lock')
  with store.lock(), open(lock) as f:
    assert json.load(f)['pid'] == os.getpid()
  assert not os.path.exists(lock)


# --- the workdir ----------------------------------------------------------------------------


def test_a_workdir_to_be_made_is_accepted_and_nothing_is_left_behind(tmp_path):
  runs.check_workdir(str(tmp_path / 'a' / 'b'))
  assert os.listdir(tmp_path) == []


def test_a_workdir_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
  def refuse(**kwargs):
    raise PermissionError(13, 'Permission denied')

  monkeypatch.setattr(runs.tempfile, 'TemporaryFile', refuse)
  with pytest.raises(ConfigError) as error:
    runs.check_workdir(str(tmp_path / 'wd'), '--config.out')
  assert str(error.value) == (
    f'--config.out={str(tmp_path / "wd")!r}: cannot write into {tmp_path} (Permission denied).'
  )


def test_unwritable_workdir_is_refused_before_training(tmp_path, data_dir):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  config = tiny_study_config(blocker / 'wd', data_dir, methods='ft')
  with pytest.raises(ConfigError, match=r'--config.workdir=.*a_file is a file, not a directory'):
    jaxunlearn.Study(config).run()


def test_full_disk_is_refused_before_training(tmp_path, data_dir, monkeypatch):
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(runs.shutil, 'disk_usage', lambda path: usage(10**9, 10**9, 10**6))
  with pytest.raises(ConfigError, match=r'--config.workdir=.*only 1 MiB free on its disk'):
    jaxunlearn.Study(tiny_study_config(tmp_path / 'wd', data_dir, methods='ft')).run()
  assert not (tmp_path / 'wd').exists()
