"""How the binaries start and fail: one line on stderr for every bad value, exit code 2.

`run(main)` wraps `absl.app.run`. A flag that does not parse, or a `ConfigError` raised by the
validation that runs before any data is built, prints ``error: --config.X=...: what is allowed``
and exits with 2, with no traceback. Any other exception (a diverged run, a corrupt file) prints
its traceback under ``--verbosity=1`` or higher (absl's default is -1), and always ends with one ``error:`` line (exit 1).
Before `main`, it makes JAX's CPU backend expose one device per core
(`sharding.use_one_cpu_device_per_core`).
"""

from __future__ import annotations

import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from jaxunlearn import sharding
from jaxunlearn.config import ConfigError

USAGE_EXIT = 2


def _one_line(message: str) -> str:
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  return ' '.join(lines) if lines else 'invalid input'


def _usage_error(error: Exception, argv) -> None:
  """Prints a flag error as one line and exits with USAGE_EXIT."""
  message = _one_line(error)
  if isinstance(error, (AttributeError, KeyError)):
    # ml_collections names only the key of a config field that does not exist (in a KeyError,
    # which an AttributeError may wrap), then on a second line perhaps the field it resembles.
    inner = error.args[0] if error.args and isinstance(error.args[0], KeyError) else error
    key, *hint = str(inner.args[0] if inner.args else inner).splitlines()
    key = key.strip('"\'')
    named = [
      a.split('=')[0]
      for a in argv[1:]
      if a.startswith('--config.') and a.split('=')[0].split('.')[-1] == key
    ]
    message = f'{named[0] if named else key}: no such setting in the config'
    if hint:
      hint = _one_line(' '.join(hint))
      message += f'; {hint[:1].lower()}{hint[1:]}'
  sys.stderr.write(f'error: {message}\n')
  sys.exit(USAGE_EXIT)


def define_config(default_path: str, help_string: str):
  """`config_flags.DEFINE_config_file` (locked), whose `--config.*` overrides are read when it is
  defined: one that names no field, or a value of the wrong type, is a usage error."""
  try:
    return config_flags.DEFINE_config_file('config', default_path, help_string, lock_config=True)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    _usage_error(error, sys.argv)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as error:
    _usage_error(error, argv)


def run(main) -> None:
  """Runs an absl `main(argv)` with the error contract of the module docstring."""

  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)  # progress lines only, unless asked
    sharding.use_one_cpu_device_per_core()  # each run then takes one CPU device or all
    try:
      return main(argv)
    except ConfigError as error:
      sys.stderr.write(f'error: {_one_line(error)}\n')
      sys.exit(USAGE_EXIT)
    except Exception as error:  # pylint: disable=broad-except
      if logging.get_verbosity() >= 1:
        traceback.print_exc()
      sys.stderr.write(f'error: {type(error).__name__}: {_one_line(error)}\n')
      sys.exit(1)

  app.run(guarded, flags_parser=_parse_flags)
