"""A study survives faults: SIGKILL after and inside a method run, a corrupted checkpoint, an
unwritable or full workdir, a non-finite training loss, and two studies on one workdir."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import jaxunlearn
from jaxunlearn import experiment, runs
from jaxunlearn.checkpoint import CheckpointManager
from jaxunlearn.config import ConfigError
from jaxunlearn.loop import NonFiniteLoss, run
from jaxunlearn.train import create_state, supervised_program
from tests import study_worker
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ('RTE_s', 'compile_s', 'run_seconds', 'wall_seconds')


def _start(workdir, data_dir, log_path):
  log = open(log_path, 'w+')
  proc = subprocess.Popen(
    [sys.executable, '-m', 'tests.study_worker', str(workdir), data_dir],
    cwd=REPO,
    env={**os.environ, 'PYTHONPATH': REPO},
    stdin=subprocess.DEVNULL,
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  return proc, log


def _wait_for(proc, condition, timeout=600):
  """Polls `condition()` until it holds (then SIGKILLs the process) or the process ends."""
  start = time.monotonic()
  while time.monotonic() - start < timeout:
    if condition():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  proc.kill()
  raise AssertionError('timed out')


def _scores(workdir):
  with open(glob.glob(os.path.join(workdir, '*', '*', 'results.json'))[0]) as f:
    per_seed = json.load(f)['per_seed']
  return {
    row: [{k: v for k, v in s.items() if k not in TIMING} for s in runs]
    for row, runs in per_seed.items()
  }


def _run_dirs(workdir, method):
  return glob.glob(os.path.join(workdir, '*', '*', 'runs', f'{method}_s0_*'))


def test_killed_study_resumes_to_the_uninterrupted_results(tmp_path, data_dir):
  whole, whole_log = _start(tmp_path / 'whole', data_dir, tmp_path / 'whole.log')
  assert whole.wait(timeout=600) == 0, open(tmp_path / 'whole.log').read()

  workdir = tmp_path / 'killed'
  # 1. Killed right after FT's run is complete.
  proc, log = _start(workdir, data_dir, tmp_path / 'kill1.log')
  ft_done = lambda: any(
    os.path.exists(os.path.join(d, 'run.json')) for d in _run_dirs(workdir, 'ft')
  )
  assert _wait_for(proc, ft_done), open(tmp_path / 'kill1.log').read()
  ft_json = os.path.join(_run_dirs(workdir, 'ft')[0], 'run.json')
  ft_mtime = os.stat(ft_json).st_mtime_ns
  # 2. Killed inside SFR-on's run, after its checkpoint at iteration 20.
  proc, log = _start(workdir, data_dir, tmp_path / 'kill2.log')
  mid_run = lambda: any(
    os.path.isdir(os.path.join(d, 'checkpoints', '20')) for d in _run_dirs(workdir, 'sfron')
  )
  assert _wait_for(proc, mid_run), open(tmp_path / 'kill2.log').read()
  assert not any(os.path.exists(os.path.join(d, 'run.json')) for d in _run_dirs(workdir, 'sfron'))
  # 3. The same command again finishes the study.
  proc, log = _start(workdir, data_dir, tmp_path / 'resume.log')
  assert proc.wait(timeout=600) == 0, open(tmp_path / 'resume.log').read()
  resumed_log = open(tmp_path / 'resume.log').read()
  assert '[ft s0] reused' in resumed_log
  assert '[sfron s0] step 30' in resumed_log and '[sfron s0] step 10 ' not in resumed_log
  assert os.stat(ft_json).st_mtime_ns == ft_mtime  # the completed run was not redone
  assert _scores(workdir) == _scores(tmp_path / 'whole')  # bit-identical on CPU


@pytest.fixture(scope='module')
def setup(tmp_path_factory, data_dir):
  return experiment.prepare(tiny_config(tmp_path_factory.mktemp('wd'), data_dir))


def _train(setup, checkpointer=None, stop_after=None, lr=None):
  fns, variables = setup.model(0)
  optimizer = setup.training.optimizer if lr is None else setup.training.optimizer.replace(lr=lr)
  program, txs = supervised_program(
    fns,
    optimizer,
    num_examples=len(setup.train.sources['all']),
    batch_size=64,
    epochs=1,
    source='all',
  )
  return run(
    program,
    create_state(variables, txs),
    setup.train,
    mesh=setup.mesh,
    seed=0,
    checkpointer=checkpointer,
    log_every=1000,
    stop_after=stop_after,
    stop_on_nonfinite=True,
  )


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(setup, tmp_path, capfd):
  full = _train(setup)
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=5, keep=2)
  _train(setup, manager, stop_after=12)
  assert manager.all_steps() if hasattr(manager, 'all_steps') else True
  latest = tmp_path / 'ckpt' / '10'
  for path in glob.glob(str(latest / '**' / '*'), recursive=True):
    if os.path.isfile(path):
      with open(path, 'r+b') as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))
  resumed = _train(setup, manager)
  manager.close()
  err = capfd.readouterr().err
  assert f'checkpoint {latest} cannot be read' in err and 'falling back' in err
  assert resumed.steps_run == len(setup.train.sources['all']) // 64 + 1 - 5
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(full.state.params),
    jax.device_get(resumed.state.params),
  )


def test_non_finite_training_loss_stops_and_names_the_step(setup, tmp_path):
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=2, keep=5)
  with pytest.raises(NonFiniteLoss, match=r'loss became non-finite at step (\d+)') as error:
    _train(setup, manager, lr=1e12)
  manager.wait()
  assert manager.latest_step() is None or manager.latest_step() < error.value.step
  if manager.latest_step() is not None:
    fns, variables = setup.model(0)
    restored = manager.restore(
      manager.latest_step(),
      create_state(variables, {}).replace(opt_state=_train(setup, stop_after=1).state.opt_state),
    )
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
  manager.close()


def _study_config(workdir, data_dir):
  return study_worker.config(workdir, data_dir)


def test_unwritable_workdir_is_refused_before_training(tmp_path, data_dir):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  config = _study_config(blocker / 'wd', data_dir)
  with pytest.raises(ConfigError, match=r'--config.workdir=.*a_file is a file, not a directory'):
    jaxunlearn.Study(config).run()


def test_full_disk_is_refused_before_training(tmp_path, data_dir, monkeypatch):
  import collections

  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(runs.shutil, 'disk_usage', lambda path: usage(10**9, 10**9, 10**6))
  with pytest.raises(ConfigError, match=r'--config.workdir=.*only 1 MiB free on its disk'):
    jaxunlearn.Study(_study_config(tmp_path / 'wd', data_dir)).run()
  assert not (tmp_path / 'wd').exists()


def test_a_second_study_on_the_same_workdir_is_refused(tmp_path, data_dir):
  study = jaxunlearn.Study(_study_config(tmp_path / 'wd', data_dir))
  lock = os.path.join(study.experiment_dir, 'study.lock')
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    with open(lock, 'w') as f:
      json.dump({'host': __import__('socket').gethostname(), 'pid': sleeper.pid}, f)
    with pytest.raises(ConfigError, match=rf'another study \(pid {sleeper.pid} on .*\) is running'):
      study.run()
  finally:
    sleeper.kill()
    sleeper.wait()
  assert not glob.glob(os.path.join(study.experiment_dir, 'runs', '*'))
  # Its owner gone, the lock is stale: the next study takes it over and runs.
  jaxunlearn.Study(_study_config(tmp_path / 'wd', data_dir)).run()
  assert not os.path.exists(lock)
