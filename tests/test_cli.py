"""How the binaries start and fail: a bad flag or a `ConfigError` is one `error:` line and exit
code 2, any other exception one `error:` line and exit code 1 (its traceback only when asked for);
the CPU shows one device per core."""

import os
import subprocess
import sys

import pytest

from jaxunlearn import cli, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A binary that prints its device count, then fails.
_BINARY = """
import jax
from jaxunlearn import cli


def main(argv):
  print('devices', jax.device_count(), flush=True)
  raise RuntimeError('checkpoint 7 is corrupt\\nsee above')


cli.run(main)
"""


def _binary(*args):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # no forced device count
  return subprocess.run(
    [sys.executable, '-c', _BINARY, *args],
    cwd=REPO,
    env={**env, 'PYTHONPATH': REPO},
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_one_line():
  assert cli._one_line('--config.lr=-1.0: must be\n  a number > 0.\n') == (
    '--config.lr=-1.0: must be a number > 0.'
  )
  assert cli._one_line(' \n ') == 'invalid input'


def test_an_exception_is_one_line_and_exit_1_on_one_cpu_device_per_core():
  done = _binary()
  assert done.returncode == 1
  assert done.stdout == f'devices {sharding.schedulable_cores()}\n'
  assert done.stderr == 'error: RuntimeError: checkpoint 7 is corrupt see above\n'


def test_its_traceback_is_printed_when_asked_for():
  done = _binary('--verbosity=1')
  assert done.returncode == 1
  traceback = done.stderr[done.stderr.index('Traceback (most recent call last):') :]
  assert 'in main' in traceback and 'RuntimeError: checkpoint 7 is corrupt\nsee above' in traceback
  # Then the one error line (absl's own INFO lines, asked for too, may surround it).
  assert 'error: RuntimeError: checkpoint 7 is corrupt see above' in traceback.splitlines()


def test_an_unknown_flag_is_one_line_and_exit_2():
  done = _binary('--no_such_flag=1')
  assert done.returncode == cli.USAGE_EXIT == 2
  assert done.stdout == ''  # main did not run
  assert done.stderr == "error: Unknown command line flag 'no_such_flag'\n"


@pytest.mark.parametrize(
  'flags, message',
  [
    (
      ['--config.method.salun.mask_fraction=2'],
      'error: --config.method.salun.mask_fraction=2.0: must be a number in (0, 1].',
    ),
    (['--config.epochs=-1'], 'error: --config.epochs=-1: must be an integer >= 1.'),
    (['--config.methods=ft,forgetful'], "error: --config.methods='ft,forgetful': unknown method"),
    (['--config.method.ga.beta=0.5'], 'error: '),
    (
      ['--config.epoch=3'],
      'error: --config.epoch: no such setting in the config; did you mean "epochs"',
    ),
    (['--config.epochs=abc'], 'error: '),
  ],
)
def test_binaries_print_one_line_and_exit_2(tmp_path, flags, message):
  result = subprocess.run(
    [sys.executable, '-m', 'experiments.unlearn', f'--config.workdir={tmp_path / "wd"}', *flags],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'wd').exists()
