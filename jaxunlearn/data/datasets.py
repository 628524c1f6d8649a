"""Dataset registry, loading into in-memory numpy arrays, and on-device preprocessing.

Every dataset is a TFDS dataset. The built-in ones (`mnist5k`, `digits`) are built locally into
array_record files on first use. The others are read with `tfds.data_source` when prepared as
array_record under the data dir, else with `tfds.load` when TensorFlow is installed.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxunlearn.data import builders

DATA_DIR_ENV = 'JAXUNLEARN_DATA_DIR'
DEFAULT_DATASET = 'mnist5k'
SPLITS = ('train', 'test')
CROP_PADDING = 4
# Examples per `__getitems__` call: a few large reads rather than one per example.
_READ_CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset.

  `mean` and `std` are per channel, in [0, 1] pixel units. `augment` turns on the random crop and
  horizontal flip in training. `builtin` marks the datasets our own builders make offline.
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool
  builtin: bool


# mnist5k and digits statistics are measured on their train splits; the others are the usual
# per-channel values of each train set. SVHN is not augmented: a flipped digit is another digit,
# or none.
DATASETS: dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo('mnist5k', (28, 28, 1), 10, (0.1311,), (0.3083,), augment=False, builtin=True),
    DatasetInfo('digits', (8, 8, 1), 10, (0.3056,), (0.3760,), augment=False, builtin=True),
    DatasetInfo('cifar10', (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                augment=True, builtin=False),
    DatasetInfo('cifar100', (32, 32, 3), 100, (0.5071, 0.4865, 0.4409),
                (0.2673, 0.2564, 0.2762), augment=True, builtin=False),
    DatasetInfo('svhn_cropped', (32, 32, 3), 10, (0.4377, 0.4438, 0.4728),
                (0.1980, 0.2010, 0.1970), augment=False, builtin=False),
    DatasetInfo('mnist', (28, 28, 1), 10, (0.1307,), (0.3081,), augment=False, builtin=False),
    DatasetInfo('fashion_mnist', (28, 28, 1), 10, (0.2860,), (0.3530,), augment=False,
                builtin=False),
)}


def dataset_info(name: str) -> DatasetInfo:
  """Returns the DatasetInfo of `name`; ValueError naming --dataset if it is unknown."""
  if name not in DATASETS:
    raise ValueError(f'--dataset: unknown dataset {name!r}; allowed: {", ".join(DATASETS)}.')
  return DATASETS[name]


def default_data_dir(data_dir: str | None = None) -> str:
  """`data_dir` if given, else $JAXUNLEARN_DATA_DIR, else ~/.cache/jaxunlearn/tfds."""
  chosen = data_dir or os.environ.get(DATA_DIR_ENV)
  if chosen:
    return os.path.expanduser(chosen)
  return os.path.join(os.path.expanduser('~'), '.cache', 'jaxunlearn', 'tfds')


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split held in memory, ordered by ascending example id."""

  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  index: np.ndarray   # int64 [N], stable example ids, ascending

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def load_split(name: str, split: str, data_dir: str | None = None) -> ArraySplit:
  """Loads split 'train' or 'test' of dataset `name` into numpy arrays.

  Built-in datasets are built on first use, and rebuilt when the files on disk cannot be read or
  do not hold the expected examples. For the other datasets the example ids are positions in the
  order TFDS reads the prepared files, which is fixed for one prepared copy.
  """
  info = dataset_info(name)
  if split not in SPLITS:
    raise ValueError(f'split: got {split!r}; allowed: {", ".join(SPLITS)}.')
  root = default_data_dir(data_dir)
  if info.builtin:
    return _load_builtin(info, split, root)
  return _load_external(info, split, root)


def _load_builtin(info: DatasetInfo, split: str, root: str) -> ArraySplit:
  builder = builders.build(info.name, root)
  try:
    return _read_builtin(builder, info, split)
  # array_record and TFDS report damaged or missing files with several unrelated error types
  # (RuntimeError, KeyError, ...), and _read_builtin raises ValueError on wrong contents.
  except Exception:
    return _read_builtin(builders.build(info.name, root, rebuild=True), info, split)


def _read_builtin(builder, info: DatasetInfo, split: str) -> ArraySplit:
  where = f'{info.name}/{split}'
  arrays = _check(_read_source(builder.as_data_source(split=split)), info, where)
  expected = builders.BUILDERS[info.name].SPLIT_SIZES[split]
  if len(arrays) != expected:
    raise ValueError(f'{where}: read {len(arrays)} examples, expected {expected}.')
  return arrays


def _read_source(source) -> ArraySplit:
  """Reads a whole TFDS data source in a few large chunks, sorted by the `index` feature if any."""
  images, labels, index = [], [], []
  for start in range(0, len(source), _READ_CHUNK):
    examples = source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source)))))
    images.extend(ex['image'] for ex in examples)
    labels.extend(ex['label'] for ex in examples)
    index.extend(ex.get('index', start + i) for i, ex in enumerate(examples))
  index = np.asarray(index, np.int64)
  order = np.argsort(index, kind='stable')
  return ArraySplit(images=np.stack(images)[order].astype(np.uint8),
                    labels=np.asarray(labels, np.int32)[order], index=index[order])


def _check(arrays: ArraySplit, info: DatasetInfo, where: str) -> ArraySplit:
  """Returns `arrays` if they fit the dataset's declared shape, classes and unique ids."""
  if arrays.images.shape[1:] != info.image_shape:
    raise ValueError(f'{where}: images have shape {arrays.images.shape[1:]}, expected '
                     f'{info.image_shape}.')
  if arrays.labels.min() < 0 or arrays.labels.max() >= info.num_classes:
    raise ValueError(f'{where}: labels outside [0, {info.num_classes}).')
  if np.any(np.diff(arrays.index) <= 0):
    raise ValueError(f'{where}: example ids are not unique.')
  return arrays


def _load_external(info: DatasetInfo, split: str, root: str) -> ArraySplit:
  where = f'{info.name}/{split}'
  try:
    source = tfds.data_source(info.name, split=split, data_dir=root, download=False)
  # Not prepared (KeyError: no splits), prepared in a format without random access
  # (NotImplementedError), or files gone (FileNotFoundError).
  except (KeyError, NotImplementedError, FileNotFoundError) as not_prepared:
    try:
      import tensorflow  # noqa: F401
    except ImportError:
      raise ValueError(
          f'--dataset {info.name}: no array_record files are prepared under {root}, and reading '
          'it otherwise needs TensorFlow (pip install jaxunlearn[tf]). Install it, or prepare '
          f'the files with `tfds build {info.name} --file_format=array_record '
          f'--data_dir={root}`.') from not_prepared
    return _check(_load_with_tensorflow(info.name, split, root), info, where)
  return _check(_read_source(source), info, where)


def _load_with_tensorflow(name: str, split: str, root: str) -> ArraySplit:
  """Reads a whole split with tfds.load (needs TensorFlow); the ids are the read order."""
  arrays = tfds.as_numpy(tfds.load(name, split=split, data_dir=root, batch_size=-1))
  labels = np.asarray(arrays['label'], np.int32)
  return ArraySplit(images=np.asarray(arrays['image'], np.uint8), labels=labels,
                    index=np.arange(labels.shape[0], dtype=np.int64))


def _random_crop_and_flip(image: jax.Array, key: jax.Array) -> jax.Array:
  """One image [H,W,C]: zero-pad by CROP_PADDING, crop back to H x W at random, maybe flip."""
  crop_key, flip_key = jax.random.split(key)
  pad = CROP_PADDING
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
  cropped = jax.lax.dynamic_slice(padded, (top, left, 0), image.shape)
  return jnp.where(jax.random.bernoulli(flip_key), cropped[:, ::-1, :], cropped)


def preprocess(images, info: DatasetInfo, *, train: bool, key: jax.Array | None) -> jax.Array:
  """uint8 images [B,H,W,C] -> float32, normalised per channel, augmented when training.

  Pixels are scaled to [0, 1], then normalised by the dataset's mean and std. With `train` (a
  Python bool) and `info.augment`, each image gets its own random crop after 4-pixel padding and
  a random horizontal flip, drawn from `key`. The padding is black pixels (zero before
  normalisation), as in the usual torchvision recipe. A pure jnp function, for use inside
  jax.jit on sharded batches.
  """
  images = jnp.asarray(images)
  if images.dtype != jnp.uint8:
    raise ValueError(f'images: dtype {images.dtype}; allowed: uint8.')
  if images.ndim != 4 or images.shape[1:] != info.image_shape:
    raise ValueError(f'images: shape {images.shape}; allowed for {info.name}: '
                     f'[B, {", ".join(map(str, info.image_shape))}].')
  pixels = images.astype(jnp.float32) / 255.0
  if train and info.augment:
    if key is None:
      raise ValueError(f'key: got None; augmenting {info.name} in training needs a PRNG key.')
    pixels = jax.vmap(_random_crop_and_flip)(pixels, jax.random.split(key, images.shape[0]))
  return (pixels - jnp.asarray(info.mean, jnp.float32)) / jnp.asarray(info.std, jnp.float32)
