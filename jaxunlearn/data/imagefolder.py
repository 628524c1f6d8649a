"""Image-folder datasets: `imagefolder:PATH`, PATH holding `train/<class>/*` and `test/<class>/*`.

The images (.jpg, .jpeg, .png; hidden files are ignored) are decoded with Pillow once and written
by a TFDS builder of ours into array_record files under the data dir, as raw uint8 tensors (no
TensorFlow needed), in `{data_dir}/imagefolder/{folder}-{digest}[-{H}x{W}]/1.0.0/`. The digest
covers every image's relative path and size in bytes, so adding, removing or renaming a file, or
any edit that changes its size in bytes, gives a new build; an edit that keeps a file's size in
bytes is not seen (delete the build folder then).

Class names are the sorted class-folder names; labels are their positions. Example ids are
positions in the sorted relative paths ('cat/0001.jpg') of a split, so they are the same on every
machine. Images are converted to RGB, or to one grey channel when every image is grey; with
`image_size` each is resized (bilinear) to H x W, otherwise all must already share one size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jaxunlearn.config import ConfigError
from jaxunlearn.data import builders

PREFIX = 'imagefolder:'
SPLITS = ('train', 'test')
EXTENSIONS = ('.jpg', '.jpeg', '.png')
BUILDER_NAME = 'imagefolder'
VERSION = '1.0.0'
# Bands of the Pillow modes that hold no colour: such images become one grey channel.
_GREY_BANDS = frozenset({'1', 'L', 'I', 'F', 'A'})


def is_image_folder(name: str) -> bool:
  """Whether a --config.dataset value names an image folder ('imagefolder:PATH')."""
  return name.startswith(PREFIX)


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """The image files of a folder dataset, found and checked, but not opened.

  `files[split]` holds (relative path, label) pairs sorted by relative path; `digest` is the
  sha256 hex digest of every split, relative path and file size.
  """

  spec: str
  root: str
  class_names: tuple[str, ...]
  files: dict[str, list[tuple[str, int]]]
  digest: str

  def error(self, problem: str) -> ValueError:
    return _error(self.spec, problem)


def _error(spec: str, problem: str) -> ValueError:
  return ConfigError(f'--config.dataset={spec}: {problem}')


def list_folder(spec: str) -> FolderListing:
  """Lists and checks the image files of `spec` ('imagefolder:PATH').

  Args:
    spec: the --config.dataset value.

  Returns:
    The listing, with the classes and the digest of the folder's contents.

  Raises:
    ValueError: (message starting `--config.dataset=imagefolder:PATH:`) if PATH is not a folder,
      lacks `train` or `test`, holds anything but class folders there, a class folder holds a
      sub-folder, a file that is not .jpg/.jpeg/.png, or no image, if the splits' classes
      differ, or if there are fewer than two classes.
  """
  root = os.path.abspath(os.path.expanduser(spec[len(PREFIX) :]))
  if not os.path.isdir(root):
    raise _error(spec, f'{root} is not a folder.')
  for split in SPLITS:
    if not os.path.isdir(os.path.join(root, split)):
      raise _error(
        spec,
        f'no {split} folder in {root} (expected {root}/train/<class>/*.jpg '
        f'and {root}/test/<class>/*.jpg; .jpeg and .png files work too).',
      )
  digest = hashlib.sha256()
  classes_by_split, files = {}, {}
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    classes = sorted(_visible(split_dir))
    for name in classes:
      if not os.path.isdir(os.path.join(split_dir, name)):
        raise _error(
          spec,
          f'{os.path.join(split_dir, name)} is not a class folder (only class '
          f'folders may be in {split_dir}).',
        )
    classes_by_split[split] = classes
    entries = []
    for name in classes:
      class_files = _list_class(spec, os.path.join(split_dir, name))
      entries.extend((f'{name}/{file}', size) for file, size in class_files)
    entries.sort()
    label_of = {name: label for label, name in enumerate(classes)}
    files[split] = [(path, label_of[path.split('/', 1)[0]]) for path, _ in entries]
    for path, size in entries:
      digest.update(f'{split}/{path}\0{size}\n'.encode())
  train_classes, test_classes = (set(classes_by_split[split]) for split in SPLITS)
  if train_classes != test_classes:
    raise _error(
      spec,
      'train and test have different class folders (only in train: '
      f'{sorted(train_classes - test_classes)}; only in test: '
      f'{sorted(test_classes - train_classes)}).',
    )
  if len(train_classes) < 2:
    raise _error(
      spec,
      f'{len(train_classes)} class folder(s) in {root}/train; a classification '
      'dataset needs at least two.',
    )
  return FolderListing(
    spec=spec,
    root=root,
    class_names=tuple(classes_by_split['train']),
    files=files,
    digest=digest.hexdigest(),
  )


def _visible(folder: str) -> list[str]:
  """The entries of `folder` that are not hidden (.DS_Store and the like)."""
  return [name for name in os.listdir(folder) if not name.startswith('.')]


def _list_class(spec: str, class_dir: str) -> list[tuple[str, int]]:
  """(file name, size in bytes) of the images in one class folder; ValueError on anything else."""
  found = []
  with os.scandir(class_dir) as entries:
    for entry in entries:
      if entry.name.startswith('.'):
        continue
      if entry.is_dir():
        raise _error(spec, f'{entry.path} is a folder; a class folder may hold only images.')
      if not entry.name.lower().endswith(EXTENSIONS):
        raise _error(spec, f'{entry.path} is not an image file (allowed: {", ".join(EXTENSIONS)}).')
      found.append((entry.name, entry.stat().st_size))
  if not found:
    raise _error(spec, f'{class_dir} holds no images ({", ".join(EXTENSIONS)}).')
  return found


def build_name(listing: FolderListing, image_size: tuple[int, int] | None) -> str:
  """The name of the folder's build: its folder name, digest and target size, directory-safe.

  It is also the dataset's name in experiment directories and forget-split digests.
  """
  folder = re.sub(r'[^a-z0-9]+', '-', os.path.basename(listing.root).lower()).strip('-')
  name = f'{folder or "images"}-{listing.digest[:16]}'
  if image_size is not None:
    name += f'-{image_size[0]}x{image_size[1]}'
  return name


@dataclasses.dataclass(frozen=True)
class DecodedFolder:
  """Every image of a folder decoded: uint8 [N,H,W,C] images and int64 labels per split."""

  images: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]


def decode_folder(listing: FolderListing, image_size: tuple[int, int] | None) -> DecodedFolder:
  """Decodes every image of `listing` with Pillow, resized to `image_size` (H, W) if given.

  Raises ValueError naming the file when one cannot be read as an image, and naming two files
  when images differ in size and `image_size` is None.
  """
  from PIL import Image, UnidentifiedImageError

  decoded, grey = {}, True
  for split in SPLITS:
    arrays = []
    for path, _ in listing.files[split]:
      full_path = os.path.join(listing.root, split, path)
      try:
        with Image.open(full_path) as image:
          image.load()
          is_grey = set(image.getbands()) <= _GREY_BANDS
          image = image.convert('L' if is_grey else 'RGB')
      except (OSError, UnidentifiedImageError, ValueError) as err:
        raise listing.error(f'cannot read {full_path} as an image ({err}).') from None
      grey &= is_grey
      if image_size is not None and image.size != image_size[::-1]:
        image = image.resize(image_size[::-1], Image.Resampling.BILINEAR)
      arrays.append(np.asarray(image))
    decoded[split] = arrays
  first = decoded['train'][0]
  for split in SPLITS:
    for position, array in enumerate(decoded[split]):
      if array.shape[:2] != first.shape[:2]:
        raise listing.error(
          f'images differ in size: {_path(listing, "train", 0)} is {first.shape[0]}x'
          f'{first.shape[1]} (HxW), {_path(listing, split, position)} is {array.shape[0]}x'
          f'{array.shape[1]}; set --config.image_size=H,W to resize them all.'
        )

  def with_channels(array: np.ndarray) -> np.ndarray:
    if grey:
      return array[..., None]
    # In a folder that mixes grey and colour images, the grey ones get three equal channels.
    return array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=-1)

  return DecodedFolder(
    images={
      split: np.stack([with_channels(array) for array in decoded[split]]) for split in SPLITS
    },
    labels={
      split: np.asarray([label for _, label in listing.files[split]], np.int64) for split in SPLITS
    },
  )


def _path(listing: FolderListing, split: str, position: int) -> str:
  return os.path.join(listing.root, split, listing.files[split][position][0])


class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a decoded image folder as array_record: `image`, `label` (ClassLabel with the class
  names) and `index` (the example id). Read the result with `tfds.builder_from_directory`."""

  name = BUILDER_NAME
  VERSION = tfds.core.Version(VERSION)
  # Nothing is downloaded; see builders._BuiltinBuilder.
  code_path = None

  def __init__(
    self,
    *,
    listing: FolderListing,
    image_size: tuple[int, int] | None,
    decoded: DecodedFolder,
    **kwargs,
  ):
    self._listing = listing
    self._decoded = decoded
    super().__init__(
      config=tfds.core.BuilderConfig(
        name=build_name(listing, image_size),
        version=VERSION,
        description=f'The images of {listing.root}.',
      ),
      **kwargs,
    )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f'Image folder {self._listing.root}.',
      features=tfds.features.FeaturesDict(
        {
          # Stored as raw bytes: TFDS writes a default uint8 Tensor as a list of int64,
          # several times slower to write and read.
          'image': tfds.features.Tensor(
            shape=self._decoded.images['train'].shape[1:],
            dtype=np.uint8,
            encoding=tfds.features.Encoding.BYTES,
          ),
          'label': tfds.features.ClassLabel(names=self._listing.class_names),
          'index': tfds.features.Scalar(dtype=np.int64),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    images, labels = self._decoded.images[split], self._decoded.labels[split]
    for i in range(len(labels)):
      yield i, {'image': images[i], 'label': int(labels[i]), 'index': i}


def version_dir(data_dir: str, listing: FolderListing, image_size: tuple[int, int] | None) -> str:
  """Where the build of `listing` lives under `data_dir`."""
  return os.path.join(data_dir, BUILDER_NAME, build_name(listing, image_size), VERSION)


def prepare(
  listing: FolderListing,
  data_dir: str,
  image_size: tuple[int, int] | None,
  *,
  rebuild: bool = False,
) -> tfds.core.DatasetBuilder:
  """Returns a read-only builder of the folder's build under `data_dir`, building it if needed.

  Args:
    listing: the checked folder (`list_folder`).
    data_dir: the data dir.
    image_size: (H, W) to resize every image to, or None to keep their one shared size.
    rebuild: delete the existing build and build again (it is damaged).

  Returns:
    A builder read from the build's directory (`tfds.builder_from_directory`).
  """
  directory = version_dir(data_dir, listing, image_size)
  if rebuild or not os.path.isfile(os.path.join(directory, 'dataset_info.json')):
    with builders.announce(builders.preparing_message(listing.spec, directory, rebuild)):
      decoded = decode_folder(listing, image_size)
      builders.build_in_place(
        lambda: ImageFolderBuilder(
          listing=listing,
          image_size=image_size,
          decoded=decoded,
          data_dir=data_dir,
          file_format='array_record',
        )
      )
  with builders.quiet_tfds():
    return tfds.builder_from_directory(directory)
