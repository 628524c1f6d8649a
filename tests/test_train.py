"""Training binary: end to end, kill-and-resume, multi-host on loopback, and bad input."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(out_dir, workdir, data_dir, *extra):
  """Starts a worker whose output goes to a file: with two workers, a full pipe that is not
  being read would block one of them inside a collective and hang both."""
  env = {**os.environ, 'PYTHONPATH': REPO}
  log = open(os.path.join(out_dir, f'worker{"-".join(map(str, extra))}.log'), 'w+')
  proc = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'tests.train_worker',
      str(out_dir),
      str(workdir),
      data_dir,
      *map(str, extra),
    ],
    cwd=REPO,
    env=env,
    stdin=subprocess.DEVNULL,
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  proc.log = log
  return proc


def _finish(*procs, timeout=240):
  """Waits for workers; returns the exit code and output of each.

  When one worker fails, the others are ended at once: they would wait for it in their next
  collective until the timeout. Workers still running at `timeout` print their stacks (SIGUSR1,
  see train_worker) and are killed, and the test fails with every worker's output.
  """
  deadline = time.monotonic() + timeout
  hung = False
  while any(p.poll() is None for p in procs):
    failed = any(p.returncode not in (None, 0) for p in procs)
    hung = time.monotonic() > deadline
    if failed or hung:
      running = [p for p in procs if p.poll() is None]
      for p in running:
        p.send_signal(signal.SIGUSR1)
      time.sleep(2)
      for p in running:
        p.kill()
        p.wait()
      break
    time.sleep(0.1)
  results = []
  for p in procs:
    p.log.seek(0)
    results.append((p.returncode, p.log.read()))
    p.log.close()
  if hung:
    pytest.fail(
      f'worker(s) still running after {timeout} s; their stacks end their output:\n'
      f'{_outputs(results)}',
      pytrace=False,
    )
  return results


def _outputs(results):
  """Every worker's exit code and output, for a failure message."""
  return '\n'.join(
    f'--- worker {i} (exit {code}) ---\n{log}' for i, (code, log) in enumerate(results)
  )


def _params(path):
  with np.load(path) as f:
    return dict(f)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data_dir):
  out = tmp_path_factory.mktemp('full')
  [(code, log)] = _finish(_worker(out, out / 'wd', data_dir))
  assert code == 0, log
  return _params(out / 'params.npz'), log


def test_progress_lines_and_outputs(uninterrupted, tmp_path_factory):
  _, log = uninterrupted
  assert 'ex/s' in log and 'ETA' in log and 'loss' in log


def test_killed_run_resumes_to_the_same_params(uninterrupted, tmp_path, data_dir):
  ckpt = tmp_path / 'wd' / 'digits-cnn' / 'original_s0' / 'checkpoints'
  proc = _worker(tmp_path, tmp_path / 'wd', data_dir)
  deadline = time.time() + 240
  while time.time() < deadline and not (
    ckpt.exists() and any(d.name.isdigit() and int(d.name) >= 8 for d in ckpt.iterdir())
  ):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  _finish(proc)
  steps = sorted(int(d.name) for d in ckpt.iterdir() if d.name.isdigit())
  assert steps and steps[-1] < 69, f'the run ended before it was killed: {steps}'
  assert not (tmp_path / 'params.npz').exists()
  [(code, log)] = _finish(_worker(tmp_path, tmp_path / 'wd', data_dir))
  assert code == 0, log
  expected, _ = uninterrupted
  resumed = _params(tmp_path / 'params.npz')
  assert resumed.keys() == expected.keys()
  for key in expected:
    np.testing.assert_array_equal(resumed[key], expected[key], err_msg=key)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_on_loopback_match_one_process(uninterrupted, tmp_path, data_dir):
  """Two processes with 4 CPU devices each (gloo between them) train as one process does."""
  port = _free_port()
  procs = [_worker(tmp_path, tmp_path / 'wd', data_dir, pid, 2, port) for pid in (0, 1)]
  results = _finish(*procs, timeout=180)
  assert all(code == 0 for code, _ in results), _outputs(results)
  expected, _ = uninterrupted
  got = _params(tmp_path / 'params.npz')
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-5, err_msg=key)
