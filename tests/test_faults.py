"""A study survives faults: SIGKILL after and inside a method run, and a non-finite training
loss."""

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

from jaxunlearn.checkpoint import CheckpointManager
from jaxunlearn.loop import NonFiniteLoss
from jaxunlearn.train import create_state
from tests.conftest import train_epoch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _is_seconds(key):
  """Whether a score is a time (RTE_s, compile_s, steps_s, ...): never equal across runs."""
  return key.endswith('_s') or key in ('run_seconds', 'wall_seconds')


def _scores(workdir):
  with open(glob.glob(os.path.join(workdir, '*', '*', 'results.json'))[0]) as f:
    per_seed = json.load(f)['per_seed']
  return {
    row: [{k: v for k, v in s.items() if not _is_seconds(k)} for s in runs]
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


def test_non_finite_training_loss_stops_and_names_the_step(tiny_experiment, tmp_path):
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=2, keep=5)
  with pytest.raises(NonFiniteLoss, match=r'loss became non-finite at step (\d+)') as error:
    train_epoch(tiny_experiment, checkpointer=manager, lr=1e12)
  manager.wait()
  assert manager.latest_step() is None or manager.latest_step() < error.value.step
  if manager.latest_step() is not None:
    fns, variables = tiny_experiment.model(0)
    restored = manager.restore(
      manager.latest_step(),
      create_state(variables, {}).replace(
        opt_state=train_epoch(tiny_experiment, stop_after=1).state.opt_state
      ),
    )
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
  manager.close()
