"""The one file writer: every file the library writes is written whole or not at all.

`atomic_file` writes to a temporary file beside the target and renames it onto the target once it
is complete and synced, so a reader, or a run killed mid-write, never sees half a file. This module
imports nothing of the library, so any layer may write through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w', **open_kwargs) -> Iterator[Any]:
  """A file object for writing `path` whole.

  Args:
    path: the file to write; its folder is made if missing.
    mode: 'w' or 'wb'.
    **open_kwargs: passed to `os.fdopen` (e.g. ``encoding='utf-8'``).

  Yields:
    The open temporary file. On leaving the block it is synced, made readable by all and renamed
    onto `path`; on an error it is removed and `path` is left as it was.
  """
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  handle, temporary = tempfile.mkstemp(
    dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp'
  )
  try:
    with os.fdopen(handle, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(temporary, 0o644)  # mkstemp makes the file private
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_file(path) as f:
    f.write(text)


def write_json(path: str, payload: Any) -> None:
  """Writes `payload` as indented JSON (numpy scalars and arrays as numbers and lists),
  atomically."""
  with atomic_file(path) as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)


def _json_default(obj):
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f'not JSON serialisable: {type(obj)}')
