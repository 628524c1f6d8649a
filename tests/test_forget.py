"""Tests for jaxunlearn.data.forget: --forget specs, splits, saving and loading."""

import hashlib
import json
import os

import numpy as np
import pytest

from jaxunlearn import data
from jaxunlearn.data import ArraySplit, ForgetSpec

INFO = data.dataset_info('mnist5k')


def _arrays(labels):
  labels = np.asarray(labels, np.int32)
  return ArraySplit(
    images=np.zeros((labels.size, 28, 28, 1), np.uint8),
    labels=labels,
    index=np.arange(labels.size, dtype=np.int64),
  )


# Like mnist5k: 4,000 train and 1,000 test examples, labels cycling 0..9.
TRAIN = _arrays(np.arange(4000) % 10)
TEST = _arrays(np.arange(1000) % 10)


def _split(spec, seed=0, train=TRAIN, test=TEST):
  return data.make_forget_split(spec, seed, train, test, INFO)


@pytest.mark.parametrize(
  'spec, expected',
  [
    ('random:0.1', ForgetSpec('random', 0.1)),
    ('random:0.5', ForgetSpec('random', 0.5)),
    ('random:400', ForgetSpec('random', 400)),
    ('class:3', ForgetSpec('class', (3,))),
    ('class:7,3', ForgetSpec('class', (3, 7))),
    ('class: 3, 7', ForgetSpec('class', (3, 7))),
    ('indices:/runs/forget.npy', ForgetSpec('indices', '/runs/forget.npy')),
  ],
)
def test_parse_each_form(spec, expected):
  parsed = data.parse_forget_spec(spec)
  assert parsed == expected
  assert type(parsed.value) is type(expected.value)


def test_random_fraction_and_count_sizes():
  split = _split('random:0.1')
  assert split.kind == 'random' and split.classes == ()
  assert split.forget.size == 400 and split.retain.size == 3600
  assert _split('random:0.5').forget.size == 2000
  assert _split('random:400').forget.size == 400
  assert _split('random:1').forget.size == 1
  assert _split('random:3999').retain.size == 1
  # 0.00035 * 4000 = 1.4 rounds to 1; 0.0004 * 4000 = 1.6 rounds to 2.
  assert _split('random:0.00035').forget.size == 1
  assert _split('random:0.0004').forget.size == 2
  assert split.test_forget is None and split.test_retain is None


def test_random_split_partitions_train_and_comes_from_the_seed_alone():
  split = _split('random:0.1', seed=7)
  assert split.forget.dtype == np.int64 and split.retain.dtype == np.int64
  assert np.all(np.diff(split.forget) > 0) and np.all(np.diff(split.retain) > 0)
  assert np.array_equal(np.union1d(split.forget, split.retain), np.arange(4000))
  assert np.intersect1d(split.forget, split.retain).size == 0
  expected = np.sort(np.random.default_rng(7).choice(4000, 400, replace=False))
  assert np.array_equal(split.forget, expected)


def test_determinism_across_calls_and_seeds():
  first, again = _split('random:0.1', seed=3), _split('random:0.1', seed=3)
  assert np.array_equal(first.forget, again.forget)
  assert first.digest == again.digest
  other = _split('random:0.1', seed=4)
  assert not np.array_equal(first.forget, other.forget)
  assert first.digest != other.digest
  class_a, class_b = _split('class:3', seed=0), _split('class:3', seed=99)
  assert np.array_equal(class_a.forget, class_b.forget)
  assert class_a.digest == class_b.digest


def test_class_split_covers_the_class_in_train_and_test():
  split = _split('class:3')
  assert split.kind == 'class' and split.classes == (3,)
  assert np.array_equal(split.forget, np.arange(3, 4000, 10))
  assert split.retain.size == 3600
  assert np.array_equal(split.test_forget, np.arange(3, 1000, 10))
  assert np.array_equal(split.test_retain, np.setdiff1d(np.arange(1000), np.arange(3, 1000, 10)))
  two = _split('class:7,3')
  assert two.classes == (3, 7)
  assert np.array_equal(two.forget, np.sort(np.r_[np.arange(3, 4000, 10), np.arange(7, 4000, 10)]))
  assert two.test_forget.size == 200 and two.test_retain.size == 800
  assert set(TEST.labels[two.test_forget]) == {3, 7}
  assert 3 not in TEST.labels[two.test_retain]


def test_indices_split(tmp_path):
  path = str(tmp_path / 'forget.npy')
  np.save(path, np.array([5, 1, 3999, 3]))
  split = _split(f'indices:{path}')
  assert split.kind == 'indices'
  assert split.forget.tolist() == [1, 3, 5, 3999]
  assert split.retain.size == 3996 and split.test_forget is None


def test_digest_is_sha256_of_name_count_and_forget_positions():
  split = _split('random:0.1', seed=1)
  expected = hashlib.sha256(
    b'mnist5k\0' + np.array([4000], '<i8').tobytes() + split.forget.astype('<i8').tobytes()
  ).hexdigest()
  assert split.digest == expected
  assert data.forget_split_digest('digits', split.forget, 4000) != expected
  assert data.forget_split_digest('mnist5k', split.forget, 4001) != expected


def test_save_load_round_trip(tmp_path):
  assert data.load_forget_split(str(tmp_path)) is None
  for spec in ('class:3,7', 'random:0.1'):
    run_dir = str(tmp_path / spec.replace(':', '_'))
    split = _split(spec, seed=5)
    data.save_forget_split(split, run_dir)
    assert sorted(os.listdir(run_dir)) == ['split.json', 'split.npz']
    loaded = data.load_forget_split(run_dir)
    for field in ('dataset', 'spec', 'seed', 'kind', 'classes', 'digest'):
      assert getattr(loaded, field) == getattr(split, field)
    for field in ('forget', 'retain', 'test_forget', 'test_retain'):
      saved, back = getattr(split, field), getattr(loaded, field)
      if saved is None:
        assert back is None
      else:
        assert back.dtype == np.int64 and np.array_equal(back, saved)
    with open(os.path.join(run_dir, 'split.json')) as f:
      meta = json.load(f)
    assert meta['num_train'] == 4000 and meta['digest'] == split.digest


def test_load_rejects_positions_that_do_not_match_the_digest(tmp_path):
  split = _split('random:0.1')
  data.save_forget_split(split, str(tmp_path))
  forget = split.forget.copy()
  forget[0] = split.retain[0]
  np.savez(
    str(tmp_path / 'split.npz'),
    forget=np.sort(forget),
    retain=np.setdiff1d(np.arange(4000), forget),
  )
  with pytest.raises(ValueError, match='inconsistent'):
    data.load_forget_split(str(tmp_path))


@pytest.mark.parametrize(
  'spec, message',
  [
    ('random', "expected 'KIND:VALUE'"),
    ('subset:0.1', "unknown kind 'subset'"),
    ('random:', 'missing value'),
    ('random:abc', 'fraction or a count'),
    ('random:1.5', 'outside \\(0, 1\\)'),
    ('random:1.0', 'outside \\(0, 1\\)'),
    ('random:0.0', 'outside \\(0, 1\\)'),
    ('random:-0.1', 'outside \\(0, 1\\)'),
    ('random:nan', 'outside \\(0, 1\\)'),
    ('random:0.0001', 'empty forget or retain'),
    ('random:0.9999', 'empty forget or retain'),
    ('random:0', 'outside \\[1, 3999\\]'),
    ('random:4000', 'outside \\[1, 3999\\]'),
    ('random:-5', 'outside \\[1, 3999\\]'),
    ('class:10', 'outside \\[0, 9\\]'),
    ('class:-1', 'outside \\[0, 9\\]'),
    ('class:three', 'comma-separated integers'),
    ('class:3,', 'comma-separated integers'),
    ('class:3,3', 'listed twice'),
    ('class:0,1,2,3,4,5,6,7,8,9', 'retain set is empty'),
    ('indices:forget.txt', '.npy'),
  ],
)
def test_bad_specs_name_the_flag(spec, message):
  with pytest.raises(ValueError, match=message) as err:
    _split(spec)
  assert str(err.value).startswith('--config.forget=')
  assert 'allowed forms' in str(err.value)


def test_class_with_no_train_example_gives_empty_forget_set():
  train = _arrays(np.arange(900) % 9)
  with pytest.raises(ValueError, match='--config.forget.*forget set is empty'):
    _split('class:9', train=train)


@pytest.mark.parametrize(
  'positions, message',
  [
    (np.array([1, 2, 2]), 'more than once'),
    (np.array([0, 4000]), 'outside \\[0, 3999\\]'),
    (np.array([-1, 3]), 'outside \\[0, 3999\\]'),
    (np.array([], np.int64), 'forget set is empty'),
    (np.array([0.0, 1.0]), '1-D integer array'),
    (np.array([[0, 1]]), '1-D integer array'),
    (np.arange(4000), 'retain set is empty'),
  ],
)
def test_bad_indices_files(tmp_path, positions, message):
  path = str(tmp_path / 'forget.npy')
  np.save(path, positions)
  with pytest.raises(ValueError, match='--config.forget=.*' + message):
    _split(f'indices:{path}')


def test_missing_indices_file(tmp_path):
  path = str(tmp_path / 'absent.npy')
  with pytest.raises(ValueError, match='--config.forget=.*does not exist'):
    _split(f'indices:{path}')


@pytest.mark.parametrize('seed', [-1, 1.5, True])
def test_bad_seed(seed):
  with pytest.raises(ValueError, match='seed.*non-negative integer'):
    _split('random:0.1', seed=seed)
