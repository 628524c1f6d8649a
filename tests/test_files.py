"""The one file writer: a file is written whole or not at all, and nothing else is left behind."""

import json
import os
import stat

import numpy as np
import pytest

from jaxunlearn import files


def _names(directory):
  return sorted(os.listdir(directory))


def test_a_written_file_replaces_the_old_one_whole_and_is_readable_by_all(tmp_path):
  path = tmp_path / 'out.txt'
  path.write_text('old')
  with files.atomic_file(str(path)) as f:
    f.write('new ')
    assert path.read_text() == 'old'  # the target is untouched until the block ends
    f.write('text')
  assert path.read_text() == 'new text'
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
  assert _names(tmp_path) == ['out.txt']


def test_an_error_leaves_the_old_file_and_no_temporary_file(tmp_path):
  path = tmp_path / 'out.txt'
  path.write_text('old')
  with pytest.raises(RuntimeError, match='killed mid-write'), files.atomic_file(str(path)) as f:
    f.write('half of the new')
    raise RuntimeError('killed mid-write')
  assert path.read_text() == 'old'
  assert _names(tmp_path) == ['out.txt']


def test_an_interrupt_leaves_no_file_behind(tmp_path):
  path = tmp_path / 'new' / 'out.bin'
  with pytest.raises(KeyboardInterrupt), files.atomic_file(str(path), 'wb'):
    raise KeyboardInterrupt
  assert _names(tmp_path / 'new') == []  # the folder is made, no file is left in it


def test_binary_mode_and_missing_folders(tmp_path):
  path = tmp_path / 'a' / 'b' / 'weights.bin'
  with files.atomic_file(str(path), 'wb') as f:
    f.write(b'\x00\x01\x02')
  assert path.read_bytes() == b'\x00\x01\x02'


def test_a_file_in_the_current_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  files.write_text('plain.txt', 'here')
  assert (tmp_path / 'plain.txt').read_text() == 'here'
  assert _names(tmp_path) == ['plain.txt']


def test_write_json_takes_numpy_values_and_sorts_keys(tmp_path):
  path = tmp_path / 'scores.json'
  files.write_json(
    str(path), {'b': np.float32(0.5), 'a': np.int64(3), 'c': np.arange(3), 'd': [np.float64(1.5)]}
  )
  assert json.loads(path.read_text()) == {'a': 3, 'b': 0.5, 'c': [0, 1, 2], 'd': [1.5]}
  assert list(json.loads(path.read_text())) == ['a', 'b', 'c', 'd']


def test_write_json_of_an_unserialisable_value_keeps_the_old_file(tmp_path):
  path = tmp_path / 'scores.json'
  files.write_json(str(path), {'ok': 1})
  with pytest.raises(TypeError, match="not JSON serialisable: <class 'object'>"):
    files.write_json(str(path), {'ok': 2, 'bad': object()})
  assert json.loads(path.read_text()) == {'ok': 1}
  assert _names(tmp_path) == ['scores.json']
