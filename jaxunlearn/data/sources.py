"""Dataset sources: a dataset's info read from the data, and its splits loaded into numpy arrays.

`--config.dataset` names one of
  * a built-in dataset (`mnist5k`, `digits`), built offline into array_record files on first use;
  * any TFDS dataset with an image feature (`tfds.features.Image`, or a uint8 Tensor of shape
    H x W x C) and a ClassLabel label, read with `tfds.data_source` when it is prepared as
    array_record under the data dir, else with `tfds.load` when TensorFlow is installed;
  * an image folder, `imagefolder:PATH` (see `imagefolder.py`).

A dataset's image shape, classes and class names come from its TFDS info (for a prepared dataset,
the info files beside its data); its per-channel mean and std from `jaxunlearn.data.statistics`.
The images go to the devices as uint8 and are preprocessed there (`jaxunlearn.data.device`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from jaxunlearn.config import ConfigError
from jaxunlearn.data import builders, imagefolder, statistics

DATA_DIR_ENV = 'JAXUNLEARN_DATA_DIR'
DEFAULT_DATASET = 'mnist5k'
AUGMENT_CHOICES = ('auto', 'true', 'false')
# Examples per `__getitems__` call: a few large reads rather than one per example.
_READ_CHUNK = 8192
# Never augmented by default: a flipped digit is another digit, or none.
NO_AUGMENT = frozenset({'svhn_cropped'})
# Augmentation (crop and flip) is on by default for colour images at least this large.
AUGMENT_MIN_SIZE = 32


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset as it is loaded.

  `mean` and `std` are per channel, in [0, 1] pixel units. `augment` turns on the random crop and
  horizontal flip in training. `builtin` marks the datasets our own builders make offline.
  `class_names[k]` names label k.
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: bool
  builtin: bool
  class_names: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One split held in memory, ordered by ascending example id."""

  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]
  index: np.ndarray  # int64 [N], stable example ids, ascending

  def __len__(self) -> int:
    return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A loaded dataset: its info, its train split and its test split."""

  info: DatasetInfo
  train: ArraySplit
  test: ArraySplit


def default_data_dir(data_dir: str | None = None) -> str:
  """`data_dir` if given, else $JAXUNLEARN_DATA_DIR, else ~/.cache/jaxunlearn/tfds."""
  chosen = data_dir or os.environ.get(DATA_DIR_ENV)
  if chosen:
    return os.path.expanduser(chosen)
  return os.path.join(os.path.expanduser('~'), '.cache', 'jaxunlearn', 'tfds')


def parse_image_size(value) -> tuple[int, int] | None:
  """Parses --config.image_size: 'H,W' (or a pair of ints) -> (H, W); '' or None -> None.

  Args:
    value: the flag's value.

  Returns:
    (H, W), or None to keep the dataset's own image size.
  """
  if value is None or value == '' or value == ():
    return None
  parts = value.split(',') if isinstance(value, str) else list(value)
  try:
    size = tuple(int(part) for part in parts)
  except (TypeError, ValueError):
    size = ()
  if len(size) != 2 or min(size) < 1:
    raise ConfigError(
      f'--config.image_size: got {value!r}; expected H,W with two positive '
      "integers (e.g. 32,32), or '' to keep the dataset's own size."
    )
  return size


def _parse_augment(setting) -> str:
  """--config.augment ('auto', 'true' or 'false'; bools are taken too) -> one of AUGMENT_CHOICES."""
  choice = str(setting).lower()
  if choice not in AUGMENT_CHOICES:
    raise ConfigError(f'--config.augment: got {setting!r}; allowed: {", ".join(AUGMENT_CHOICES)}.')
  return choice


def _resolve_augment(choice: str, name: str, image_shape: tuple[int, int, int]) -> bool:
  """Whether to augment, for a parsed --config.augment `choice`."""
  if choice == 'auto':
    height, width, channels = image_shape
    return channels == 3 and min(height, width) >= AUGMENT_MIN_SIZE and name not in NO_AUGMENT
  return choice == 'true'


@dataclasses.dataclass(frozen=True)
class _Source:
  """One opened dataset: what its info says, and how to read one of its splits.

  `splits` is None when they are unknown until the dataset is prepared (a TFDS dataset that
  TensorFlow will download); `directory` holds the prepared files, if any.
  """

  name: str
  tfds_name: str
  image_shape: tuple[int, int, int]
  class_names: tuple[str, ...]
  splits: tuple[str, ...] | None
  directory: str | None
  builtin: bool
  read: Callable[[str], ArraySplit]


def dataset_info(
  name: str,
  data_dir: str | None = None,
  *,
  image_size: tuple[int, int] | str | None = None,
  augment: str | bool = 'auto',
) -> DatasetInfo:
  """Returns the DatasetInfo of dataset `name` (a built-in, TFDS or `imagefolder:PATH` name).

  For a built-in dataset nothing is read. For the others the info comes from the prepared data,
  which is built first for an image folder; measuring the statistics the first time reads the
  train split.

  Args:
    name: the --config.dataset value.
    data_dir: the data dir (default: `default_data_dir()`).
    image_size: (H, W) or 'H,W' to resize every image to; None keeps their size.
    augment: 'auto', 'true' or 'false' (--config.augment).

  Returns:
    The dataset's info.
  """
  augment = _parse_augment(augment)
  source = _open(name, default_data_dir(data_dir), parse_image_size(image_size))
  return _info(source, lambda: source.read('train'), augment)


def load_dataset(
  name: str,
  data_dir: str | None = None,
  *,
  test_split: str = 'test',
  image_size: tuple[int, int] | str | None = None,
  augment: str | bool = 'auto',
) -> Dataset:
  """Loads dataset `name` (a built-in, TFDS or `imagefolder:PATH` name): info, train and test.

  Args:
    name: the --config.dataset value.
    data_dir: the data dir (default: `default_data_dir()`).
    test_split: the split evaluated as the test set (--config.test_split).
    image_size: (H, W) or 'H,W' to resize every image to; None keeps their size.
    augment: 'auto', 'true' or 'false' (--config.augment).

  Returns:
    The dataset, its info read from the data.
  """
  augment = _parse_augment(augment)
  source = _open(name, default_data_dir(data_dir), parse_image_size(image_size))
  for split, flag in (('train', '--config.dataset'), (test_split, '--config.test_split')):
    if source.splits is not None and split not in source.splits:
      raise ConfigError(
        f'{flag}: {name} has no split {split!r}; its splits: {", ".join(source.splits)}.'
      )
  train = source.read('train')
  return Dataset(
    info=_info(source, lambda: train, augment), train=train, test=source.read(test_split)
  )


def load_split(
  name: str,
  split: str,
  data_dir: str | None = None,
  *,
  image_size: tuple[int, int] | str | None = None,
) -> ArraySplit:
  """Loads split `split` of dataset `name` into numpy arrays.

  Built-in datasets and image folders are built on first use, and rebuilt when the files on disk
  cannot be read or do not hold the expected examples. For TFDS datasets without an `index`
  feature the example ids are positions in the order TFDS reads the prepared files, which is
  fixed for one prepared copy.

  Args:
    name: the --config.dataset value.
    split: a split of the dataset ('train', 'test', ...).
    data_dir: the data dir (default: `default_data_dir()`).
    image_size: (H, W) or 'H,W' to resize every image to; None keeps their size.

  Returns:
    The split's arrays, sorted by example id.
  """
  source = _open(name, default_data_dir(data_dir), parse_image_size(image_size))
  if source.splits is not None and split not in source.splits:
    raise ValueError(f'split: got {split!r}; allowed for {name}: {", ".join(source.splits)}.')
  return source.read(split)


def _info(source: _Source, train: Callable[[], ArraySplit], augment: str) -> DatasetInfo:
  if source.builtin:
    mean, std = statistics.BUILTIN_STATISTICS[source.name]
  else:
    mean, std = statistics.cached_statistics(
      source.directory, source.image_shape, lambda: train().images
    )
  return DatasetInfo(
    name=source.name,
    image_shape=source.image_shape,
    num_classes=len(source.class_names),
    mean=mean,
    std=std,
    augment=_resolve_augment(augment, source.tfds_name, source.image_shape),
    builtin=source.builtin,
    class_names=source.class_names,
  )


def _open(name: str, root: str, image_size: tuple[int, int] | None) -> _Source:
  if name in builders.BUILDERS:
    return _open_builtin(name, root, image_size)
  if imagefolder.is_image_folder(name):
    return _open_image_folder(name, root, image_size)
  return _open_tfds(name, root, image_size)


def _open_builtin(name: str, root: str, image_size: tuple[int, int] | None) -> _Source:
  builder_cls = builders.BUILDERS[name]
  if image_size is not None and image_size != builder_cls.IMAGE_SHAPE[:2]:
    raise ConfigError(
      f'--config.image_size: the built-in dataset {name} keeps its '
      f'{builder_cls.IMAGE_SHAPE[0]}x{builder_cls.IMAGE_SHAPE[1]} images (its '
      "statistics are fixed); use --config.image_size=''."
    )
  return _Source(
    name=name,
    tfds_name=name,
    image_shape=builder_cls.IMAGE_SHAPE,
    class_names=tuple(str(k) for k in range(builder_cls.NUM_CLASSES)),
    splits=tuple(builder_cls.SPLIT_SIZES),
    directory=None,
    builtin=True,
    read=lambda split: _load_builtin(name, split, root),
  )


def _load_builtin(name: str, split: str, root: str) -> ArraySplit:
  builder = builders.build(name, root)
  try:
    return _read_builtin(builder, name, split)
  # array_record and TFDS report damaged or missing files with several unrelated error types
  # (RuntimeError, KeyError, ...), and _read_builtin raises ValueError on wrong contents.
  except Exception:
    return _read_builtin(builders.build(name, root, rebuild=True), name, split)


def _read_builtin(builder, name: str, split: str) -> ArraySplit:
  builder_cls = builders.BUILDERS[name]
  where = f'{name}/{split}'
  with builders.quiet_tfds():
    arrays = _read_source(builder.as_data_source(split=split), None)
  arrays = _check(arrays, builder_cls.IMAGE_SHAPE, builder_cls.NUM_CLASSES, where)
  expected = builder_cls.SPLIT_SIZES[split]
  if len(arrays) != expected:
    raise ValueError(f'{where}: read {len(arrays)} examples, expected {expected}.')
  return arrays


def _open_image_folder(name: str, root: str, image_size: tuple[int, int] | None) -> _Source:
  listing = imagefolder.list_folder(name)
  builder = imagefolder.prepare(listing, root, image_size)

  def read(split: str) -> ArraySplit:
    where = f'{name}/{split}'
    try:
      return _read_image_folder(builder, listing, split, where)
    # Damaged files: the same unrelated error types as for the built-ins.
    except Exception:
      rebuilt = imagefolder.prepare(listing, root, image_size, rebuild=True)
      return _read_image_folder(rebuilt, listing, split, where)

  features = builder.info.features
  return _Source(
    name=f'imagefolder-{imagefolder.build_name(listing, image_size)}',
    tfds_name=imagefolder.BUILDER_NAME,
    image_shape=features['image'].shape,
    class_names=tuple(features['label'].names),
    splits=imagefolder.SPLITS,
    directory=builder.data_dir,
    builtin=False,
    read=read,
  )


def _read_image_folder(
  builder, listing: imagefolder.FolderListing, split: str, where: str
) -> ArraySplit:
  with builders.quiet_tfds():
    arrays = _read_source(builder.as_data_source(split=split), None)
  features = builder.info.features
  arrays = _check(arrays, features['image'].shape, features['label'].num_classes, where)
  if not np.array_equal(arrays.index, np.arange(len(listing.files[split]))):
    raise ValueError(f'{where}: read {len(arrays)} examples, expected {len(listing.files[split])}.')
  return arrays


def _open_tfds(name: str, root: str, image_size: tuple[int, int] | None) -> _Source:
  try:
    with builders.quiet_tfds():
      builder = tfds.builder(name, data_dir=root)
      info = builder.info
      prepared = builder.is_prepared()
  except tfds.core.DatasetNotFoundError:
    raise ConfigError(
      f'--config.dataset={name}: not a built-in dataset ({", ".join(builders.BUILDERS)}), not '
      f'{imagefolder.PREFIX}PATH, and no TFDS dataset of that name is registered or prepared '
      f'under {root}.'
    ) from None
  image_key, label_key = _feature_keys(name, info)
  image_feature, label_feature = info.features[image_key], info.features[label_key]
  shape = tuple(image_feature.shape)
  if image_size is not None:
    shape = (*image_size, shape[-1])
  elif None in shape:
    raise ConfigError(
      f'--config.dataset={name}: its images differ in size (image feature shape '
      f'{shape}); set --config.image_size=H,W to resize them on load.'
    )

  def read(split: str) -> ArraySplit:
    arrays = _read_tfds(name, split, root, image_key, label_key, image_size)
    return _check(arrays, shape, label_feature.num_classes, f'{name}/{split}')

  return _Source(
    name=name if image_size is None else f'{name}-{image_size[0]}x{image_size[1]}',
    tfds_name=name,
    image_shape=shape,
    class_names=tuple(label_feature.names),
    splits=tuple(info.splits) if prepared else None,
    directory=os.fspath(builder.data_dir),
    builtin=False,
    read=read,
  )


def _feature_keys(name: str, info) -> tuple[str, str]:
  """The (image, label) feature names: the supervised keys if there are two, else image/label."""
  keys = info.supervised_keys
  if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
    keys = ('image', 'label')
  image_key, label_key = keys
  features = info.features
  # A FeaturesDict has no .get.
  image = features[image_key] if image_key in features else None  # noqa: SIM401
  label = features[label_key] if label_key in features else None  # noqa: SIM401
  image_ok = (
    isinstance(image, (tfds.features.Image, tfds.features.Tensor))
    and image.np_dtype == np.uint8
    and len(image.shape) == 3
    and image.shape[-1] is not None
  )
  if not image_ok or not isinstance(label, tfds.features.ClassLabel):
    kinds = ', '.join(
      f'{key}: {type(feature).__name__}{tuple(feature.shape)}' for key, feature in features.items()
    )
    raise ConfigError(
      f'--config.dataset={name}: needs an image feature (tfds.features.Image or a '
      f'uint8 Tensor of shape HxWxC) {image_key!r} and a ClassLabel {label_key!r}; '
      f'its features are {kinds}.'
    )
  return image_key, label_key


def _read_tfds(
  name: str,
  split: str,
  root: str,
  image_key: str,
  label_key: str,
  image_size: tuple[int, int] | None,
) -> ArraySplit:
  try:
    with builders.quiet_tfds():
      source = tfds.data_source(name, split=split, data_dir=root, download=False)
  # Not prepared (KeyError: no splits), prepared in a format without random access
  # (NotImplementedError), or files gone (FileNotFoundError).
  except (KeyError, NotImplementedError, FileNotFoundError) as not_prepared:
    try:
      import tensorflow  # noqa: F401
    except ImportError:
      raise ConfigError(
        f'--config.dataset={name}: no array_record files are prepared under {root}, and '
        'reading it otherwise needs TensorFlow (pip install jaxunlearn[tf]). Install it, or '
        f'prepare the files with `tfds build {name} --file_format=array_record '
        f'--data_dir={root}`.'
      ) from not_prepared
    return _load_with_tensorflow(name, split, root, image_key, label_key, image_size)
  # Silenced: TFDS decodes Image features with Pillow and warns that OpenCV would be faster.
  with builders.quiet_tfds():
    return _read_source(source, image_size, image_key=image_key, label_key=label_key)


def _read_source(
  source, image_size: tuple[int, int] | None, *, image_key: str = 'image', label_key: str = 'label'
) -> ArraySplit:
  """Reads a whole TFDS data source in a few large chunks, sorted by the `index` feature if any.

  Images are resized to `image_size` (H, W) when it is given and they differ from it.
  """
  images, labels, index = [], [], []
  for start in range(0, len(source), _READ_CHUNK):
    examples = source.__getitems__(list(range(start, min(start + _READ_CHUNK, len(source)))))
    images.extend(_resize(ex[image_key], image_size) for ex in examples)
    labels.extend(ex[label_key] for ex in examples)
    index.extend(ex.get('index', start + i) for i, ex in enumerate(examples))
  index = np.asarray(index, np.int64)
  order = np.argsort(index, kind='stable')
  return ArraySplit(
    images=np.stack(images)[order].astype(np.uint8),
    labels=np.asarray(labels, np.int32)[order],
    index=index[order],
  )


def _resize(image: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
  """One uint8 image [H,W,C], resized (bilinear, with Pillow) to `image_size` if it differs."""
  image = np.asarray(image)
  if image_size is None or image.shape[:2] == image_size:
    return image
  from PIL import Image

  grey = image.shape[-1] == 1
  resized = Image.fromarray(image[..., 0] if grey else image).resize(
    image_size[::-1], Image.Resampling.BILINEAR
  )
  return np.asarray(resized)[..., None] if grey else np.asarray(resized)


def _check(
  arrays: ArraySplit, image_shape: tuple[int, ...], num_classes: int, where: str
) -> ArraySplit:
  """Returns `arrays` if they fit the dataset's declared shape, classes and unique ids."""
  if arrays.images.shape[1:] != tuple(image_shape):
    raise ValueError(
      f'{where}: images have shape {arrays.images.shape[1:]}, expected {tuple(image_shape)}.'
    )
  if arrays.labels.min() < 0 or arrays.labels.max() >= num_classes:
    raise ValueError(f'{where}: labels outside [0, {num_classes}).')
  if np.any(np.diff(arrays.index) <= 0):
    raise ValueError(f'{where}: example ids are not unique.')
  return arrays


def _load_with_tensorflow(
  name: str,
  split: str,
  root: str,
  image_key: str,
  label_key: str,
  image_size: tuple[int, int] | None,
) -> ArraySplit:
  """Reads a whole split with tfds.load (needs TensorFlow); the ids are the read order."""
  arrays = tfds.as_numpy(tfds.load(name, split=split, data_dir=root, batch_size=-1))
  labels = np.asarray(arrays[label_key], np.int32)
  images = np.asarray(arrays[image_key], np.uint8)
  if image_size is not None:
    images = np.stack([_resize(image, image_size) for image in images])
  return ArraySplit(images=images, labels=labels, index=np.arange(labels.shape[0], dtype=np.int64))
