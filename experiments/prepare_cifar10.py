r"""Extracts the shared CIFAR-10 JPEG archive into an image folder, and builds it for training.

  python -m experiments.prepare_cifar10 --archive=../shared/data/cifar10-jpeg.tar.gz
  python -m experiments.train \
      --config.dataset=imagefolder:$JAXUNLEARN_DATA_DIR/downloads/cifar10-jpeg

The archive (`cifar10-jpeg.tar.gz`, see ../shared/data/README.md) holds the 50,000 train and
10,000 test images of CIFAR-10 re-encoded as JPEG (quality 75), one folder per class. Its sha256
is checked, then it is extracted to DEST/cifar10-jpeg/{train,test}/<class>/NNNN.jpg, usable as
`--config.dataset=imagefolder:DEST/cifar10-jpeg`. With --build (the default) the image folder is
also built into array_record files under the data dir, so that the first training run starts at
once. Results on it should say "CIFAR-10, JPEG q75 copy": its pixels differ slightly from the
official release's.

Without this script: `tar xzf ../shared/data/cifar10-jpeg.tar.gz -C DEST`.
"""

import hashlib
import os
import shutil
import tarfile
import tempfile
import time

from absl import app, flags

from jaxunlearn import data
from jaxunlearn.data import imagefolder

ARCHIVE_SHA256 = 'b379c20532d0d7113e4257fb4fe37c05481e5a503319cd10c2de3889728c9e18'
FOLDER = 'cifar10-jpeg'
SPLIT_SIZES = {'train': 50_000, 'test': 10_000}
NUM_CLASSES = 10

_ARCHIVE = flags.DEFINE_string(
  'archive',
  None,
  'The archive cifar10-jpeg.tar.gz (sha256 checked); this repository keeps it in ../shared/data.',
)
_DEST = flags.DEFINE_string(
  'dest',
  '',
  'Folder to extract into (it gets DEST/cifar10-jpeg); default: '
  '$JAXUNLEARN_DATA_DIR/downloads, or ~/.cache/jaxunlearn/tfds/downloads.',
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir',
  '',
  'The data dir the build goes to (default: $JAXUNLEARN_DATA_DIR or ~/.cache/jaxunlearn/tfds).',
)
_BUILD = flags.DEFINE_bool('build', True, 'Also build the image folder into array_record files.')


def sha256_of(path: str) -> str:
  """The sha256 hex digest of the file at `path`."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def count_images(folder: str) -> dict[str, int]:
  """The number of files per split of an image folder, after checking it has 10 classes."""
  counts = {}
  for split in SPLIT_SIZES:
    classes = sorted(os.listdir(os.path.join(folder, split)))
    if len(classes) != NUM_CLASSES:
      raise ValueError(f'{folder}/{split}: {len(classes)} class folders, expected {NUM_CLASSES}.')
    counts[split] = sum(len(os.listdir(os.path.join(folder, split, name))) for name in classes)
  return counts


def extract(archive: str, dest: str) -> str:
  """Checks `archive`'s sha256 and extracts it to DEST/cifar10-jpeg, unless already there.

  Args:
    archive: the path of cifar10-jpeg.tar.gz.
    dest: the folder that receives cifar10-jpeg/.

  Returns:
    The image folder's path.
  """
  folder = os.path.join(dest, FOLDER)
  if os.path.isdir(folder):
    print(f'{folder} exists: not extracting again.')
    return folder
  if not archive:
    raise app.UsageError(
      '--archive: give the path of cifar10-jpeg.tar.gz (in this repository: '
      '../shared/data/cifar10-jpeg.tar.gz; see its README).'
    )
  if not os.path.isfile(archive):
    raise app.UsageError(
      f'--archive: {archive} does not exist (it is in ../shared/data of the project checkout).'
    )
  found = sha256_of(archive)
  if found != ARCHIVE_SHA256:
    raise app.UsageError(f'--archive: {archive} has sha256 {found}, expected {ARCHIVE_SHA256}.')
  os.makedirs(dest, exist_ok=True)
  start = time.perf_counter()
  # Extracted beside the target, then renamed: an interrupted run leaves no partial folder.
  staging = tempfile.mkdtemp(dir=dest, prefix=f'.{FOLDER}.')
  try:
    with tarfile.open(archive) as tar:
      tar.extractall(staging, filter='data')
    os.replace(os.path.join(staging, FOLDER), folder)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  print(f'Extracted {archive} to {folder} in {time.perf_counter() - start:.1f} s.')
  return folder


def main(argv):
  del argv
  data_dir = data.default_data_dir(_DATA_DIR.value or None)
  folder = extract(_ARCHIVE.value, _DEST.value or os.path.join(data_dir, 'downloads'))
  counts = count_images(folder)
  if counts != SPLIT_SIZES:
    raise ValueError(f'{folder}: {counts} images per split, expected {SPLIT_SIZES}.')
  spec = f'{imagefolder.PREFIX}{folder}'
  if _BUILD.value:
    start = time.perf_counter()
    dataset = data.load_dataset(spec, data_dir)
    print(
      f'{dataset.info.name}: {len(dataset.train)} train and {len(dataset.test)} test images '
      f'{dataset.info.image_shape}, classes {", ".join(dataset.info.class_names)}; loaded in '
      f'{time.perf_counter() - start:.1f} s.'
    )
  print(f'Use: --config.dataset={spec}')


if __name__ == '__main__':
  app.run(main)
