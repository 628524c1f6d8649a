"""How the binaries start and fail: one line on stderr for every bad value, exit code 2.

`run(main)` wraps `absl.app.run`. A flag that does not parse, or a `ConfigError` raised by the
validation that runs before any data is built, prints ``error: --config.X=...: what is allowed``
and exits with 2, with no traceback. Any other exception (a diverged run, a corrupt file) prints
its traceback under ``--verbosity=1`` or higher (absl's default is -1), and always ends with one ``error:`` line (exit 1).
"""

from __future__ import annotations

import sys
import traceback

from absl import app, flags, logging

from jaxunlearn.config import ConfigError

USAGE_EXIT = 2


def _one_line(message: str) -> str:
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  return ' '.join(lines) if lines else 'invalid input'


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.stderr.write(f'error: {_one_line(error)}\n')
    sys.exit(USAGE_EXIT)


def run(main) -> None:
  """Runs an absl `main(argv)` with the error contract of the module docstring."""

  def guarded(argv):
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)   # progress lines only, unless asked
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
