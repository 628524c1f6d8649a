"""Datasets beyond the built-ins: TFDS datasets by name, image folders, options, training subsets.

Every dataset here is made inside the test (a small TFDS builder, or generated PNG files), 32x32
colour with 3 classes, so the training steps compile once for all of them.
"""

import io
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from absl import app
from PIL import Image

import jaxunlearn
from experiments import prepare_cifar10
from jaxunlearn import data, experiment
from jaxunlearn.unlearn import run_method
from tests.conftest import tiny_config

CLASSES = ('red', 'green', 'blue')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_ARCHIVE = os.path.join(REPO, '..', 'shared', 'data', 'cifar10-jpeg.tar.gz')


def _unlearn_scores(setup, model_fns, variables) -> dict:
  """Scores of one short unlearning run (FT, one epoch) from the trained original."""
  method_cfg = jaxunlearn.methods.get('ft').config().replace(batch_size=16, epochs=1)
  return run_method(setup, 'ft', method_cfg, model_fns, variables, seed=0).scores


def _train_and_unlearn(tmp_path, data_dir, dataset, **overrides):
  """prepare(), the original model and one unlearning method on `dataset`; returns the setup."""
  config = tiny_config(
    tmp_path / 'wd',
    data_dir,
    dataset=dataset,
    forget='random:0.25',
    batch_size=16,
    epochs=1,
    **overrides,
  )
  setup = experiment.prepare(config)
  model_fns, variables, scores = setup.train_model('original', 0)
  assert 0.0 <= scores['TA'] <= 100.0
  unlearned = _unlearn_scores(setup, model_fns, variables)
  assert all(np.isfinite(unlearned[key]) for key in ('UA', 'RA', 'TA', 'MIA'))
  return setup


def _colour_images(labels, rng, shape=(32, 32)):
  """uint8 images whose dominant channel is their label, plus noise."""
  images = rng.integers(0, 96, (len(labels), *shape, 3), dtype=np.uint8)
  images[np.arange(len(labels)), ..., labels] += 150
  return images


class TinyColours(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """32x32 colour images of 3 named classes, as a raw uint8 Tensor; splits train/test/validation.

  Not registered: the code reads it by name from the prepared files alone.
  """

  VERSION = tfds.core.Version('1.0.0')
  SPLIT_SIZES = {'train': 24, 'test': 9, 'validation': 6}
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
          'label': tfds.features.ClassLabel(names=CLASSES),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split, size) for split, size in self.SPLIT_SIZES.items()}

  def _generate_examples(self, split, size):
    rng = np.random.default_rng(len(split))
    labels = np.arange(size) % 3
    for i, (image, label) in enumerate(zip(_colour_images(labels, rng), labels)):
      yield i, {'image': image, 'label': int(label)}


class MixedSizes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """PNG images (a tfds.features.Image, encoded with Pillow) of two sizes."""

  VERSION = tfds.core.Version('1.0.0')
  code_path = None
  SHAPES = ((20, 24), (28, 16))

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.ClassLabel(names=CLASSES),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(), 'test': self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      image = _colour_images(np.array([i % 3]), np.random.default_rng(i), self.SHAPES[i % 2])[0]
      yield i, {'image': _png_bytes(image), 'label': i % 3}


def _png_bytes(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def _build(builder_cls, data_dir):
  builder = builder_cls(data_dir=str(data_dir), file_format='array_record')
  tfds.display_progress_bar(False)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds_named')
  _build(TinyColours, root)
  _build(MixedSizes, root)
  return str(root)


def test_a_tfds_dataset_by_name_trains_and_unlearns(tmp_path, tfds_dir):
  setup = _train_and_unlearn(tmp_path, tfds_dir, 'tiny_colours')
  info = setup.info
  train = data.load_split('tiny_colours', 'train', tfds_dir)
  pixels = train.images.reshape(-1, 3).astype(np.float64) / 255.0
  assert info.name == 'tiny_colours' and not info.builtin
  assert info.image_shape == (32, 32, 3)
  assert info.num_classes == 3 and info.class_names == CLASSES
  np.testing.assert_allclose(info.mean, pixels.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(info.std, pixels.std(axis=0), rtol=1e-9)
  assert info.augment  # colour, 32x32
  assert np.array_equal(train.index, np.arange(24))
  assert os.path.isdir(os.path.join(setup.training.workdir, 'tiny_colours-cnn', 'original_s0'))


def test_statistics_are_cached_beside_the_data_and_follow_it(tmp_path):
  root = str(tmp_path)
  _build(TinyColours, root)
  info = data.dataset_info('tiny_colours', root)
  version_dir = os.path.join(root, 'tiny_colours', '1.0.0')
  cache = os.path.join(version_dir, data.statistics.STATISTICS_FILE)
  with open(cache) as f:
    cached = json.load(f)
  assert tuple(cached['mean']) == info.mean
  # A doctored cache is believed while its key matches the files ...
  cached['mean'] = [0.5, 0.5, 0.5]
  with open(cache, 'w') as f:
    json.dump(cached, f)
  assert data.dataset_info('tiny_colours', root).mean == (0.5, 0.5, 0.5)
  # ... and measured again once a data file changes.
  shard = next(name for name in os.listdir(version_dir) if '-train.' in name)
  os.utime(os.path.join(version_dir, shard), ns=(1, 1))
  assert data.dataset_info('tiny_colours', root).mean == info.mean


def test_augment_option(tfds_dir):
  assert not data.dataset_info('tiny_colours', tfds_dir, augment='false').augment
  assert data.dataset_info('tiny_colours', tfds_dir, augment=True).augment
  # Smaller than 32x32: not augmented unless asked for.
  assert not data.dataset_info('mixed_sizes', tfds_dir, image_size='16,16').augment
  with pytest.raises(ValueError, match='--config.augment'):
    data.dataset_info('tiny_colours', tfds_dir, augment='yes')


def test_test_split_option(tfds_dir):
  dataset = data.load_dataset('tiny_colours', tfds_dir, test_split='validation')
  assert len(dataset.train) == 24 and len(dataset.test) == 6
  with pytest.raises(ValueError, match="--config.test_split: tiny_colours has no split 'dev'"):
    data.load_dataset('tiny_colours', tfds_dir, test_split='dev')


def test_images_of_different_sizes_need_and_get_image_size(tfds_dir):
  with pytest.raises(ValueError, match=r'^--config.dataset=mixed_sizes: .*--config.image_size=H,W'):
    data.load_dataset('mixed_sizes', tfds_dir)
  dataset = data.load_dataset('mixed_sizes', tfds_dir, image_size='16,12')
  assert dataset.info.image_shape == (16, 12, 3)
  assert dataset.info.name == 'mixed_sizes-16x12'
  assert dataset.train.images.shape == (6, 16, 12, 3)
  # Without an index feature the ids follow the read order, so compare the sets of images.
  expected = []
  for i in range(6):
    image = _colour_images(np.array([i % 3]), np.random.default_rng(i), MixedSizes.SHAPES[i % 2])
    resized = Image.fromarray(image[0]).resize((12, 16), Image.Resampling.BILINEAR)
    expected.append(np.asarray(resized).tobytes())
  assert sorted(image.tobytes() for image in dataset.train.images) == sorted(expected)
  with pytest.raises(ValueError, match='--config.image_size'):
    data.parse_image_size('16')


def test_not_an_image_classification_dataset(tmp_path):
  with pytest.raises(ValueError, match=r'^--config.dataset=no_such_dataset_xyz: .*registered'):
    data.load_dataset('no_such_dataset_xyz', str(tmp_path))


# Image folders.


def _write_folder(root, counts=(('train', 4), ('test', 2)), classes=CLASSES, size=(32, 32)):
  """PNG files root/{split}/{class}/{k:02d}.png, image k of class c seeded by (split, c, k)."""
  for split, count in dict(counts).items():
    for label, name in enumerate(classes):
      os.makedirs(os.path.join(root, split, name), exist_ok=True)
      for k in range(count):
        rng = np.random.default_rng((len(split), label, k))
        image = _colour_images(np.array([label % 3]), rng, size)[0]
        Image.fromarray(image).save(os.path.join(root, split, name, f'{k:02d}.png'))
  return str(root)


def test_an_image_folder_trains_and_unlearns(tmp_path, capfd):
  folder = _write_folder(tmp_path / 'pictures')
  data_dir = str(tmp_path / 'tfds')
  setup = _train_and_unlearn(tmp_path, data_dir, f'imagefolder:{folder}')
  out, err = capfd.readouterr()
  assert out.count('Preparing imagefolder:') == 1 and 'done in' in out
  assert '\r' not in out + err and 'Shuffling' not in out + err
  info = setup.info
  assert info.name.startswith('imagefolder-pictures-')
  assert info.image_shape == (32, 32, 3) and info.class_names == tuple(sorted(CLASSES))
  train = data.load_split(f'imagefolder:{folder}', 'train', data_dir)
  # Ids are positions in the sorted relative paths: blue/00.png, blue/01.png, ..., red/03.png.
  paths = sorted(f'{name}/{k:02d}.png' for name in CLASSES for k in range(4))
  for example_id, path in zip(train.index, paths):
    expected = np.asarray(Image.open(os.path.join(folder, 'train', path)))
    np.testing.assert_array_equal(train.images[example_id], expected)
    assert info.class_names[train.labels[example_id]] == path.split('/')[0]
  assert capfd.readouterr().out == ''  # the second load reads the build


def test_an_image_folder_is_rebuilt_when_its_files_change(tmp_path):
  folder = _write_folder(tmp_path / 'pictures')
  data_dir = str(tmp_path / 'tfds')
  before = data.dataset_info(f'imagefolder:{folder}', data_dir)
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
    os.path.join(folder, 'train', 'red', '99.png')
  )
  after = data.load_dataset(f'imagefolder:{folder}', data_dir)
  assert after.info.name != before.name
  assert len(after.train) == 13
  assert sorted(os.listdir(os.path.join(data_dir, 'imagefolder'))) == sorted(
    [before.name[len('imagefolder-') :], after.info.name[len('imagefolder-') :]]
  )


def test_an_image_folder_with_image_size_and_grey_images(tmp_path):
  folder = str(tmp_path / 'grey')
  for split in ('train', 'test'):
    for label, name in enumerate(('a', 'b')):
      os.makedirs(os.path.join(folder, split, name))
      for k, size in enumerate(((10, 12), (14, 8))):
        Image.fromarray(np.full(size, 40 * label + k, np.uint8)).save(
          os.path.join(folder, split, name, f'{k}.png')
        )
  dataset = data.load_dataset(f'imagefolder:{folder}', str(tmp_path / 'tfds'), image_size='6,5')
  assert dataset.info.image_shape == (6, 5, 1) and dataset.info.name.endswith('-6x5')
  assert dataset.train.images.shape == (4, 6, 5, 1)
  assert not dataset.info.augment
  np.testing.assert_array_equal(dataset.train.images[3], np.full((6, 5, 1), 41, np.uint8))


def _no_test(root):
  _write_folder(root, counts={'train': 2})


def _different_classes(root):
  _write_folder(root)
  os.rename(os.path.join(root, 'test', 'red'), os.path.join(root, 'test', 'pink'))


def _empty_class(root):
  _write_folder(root)
  for name in os.listdir(os.path.join(root, 'test', 'green')):
    os.remove(os.path.join(root, 'test', 'green', name))


def _text_file(root):
  _write_folder(root)
  with open(os.path.join(root, 'train', 'blue', 'notes.txt'), 'w') as f:
    f.write('not an image')


def _broken_image(root):
  _write_folder(root)
  with open(os.path.join(root, 'train', 'blue', '00.png'), 'wb') as f:
    f.write(b'\x89PNG garbage')


def _mixed_sizes(root):
  _write_folder(root)
  _write_folder(root, counts={'test': 1}, classes=('green',), size=(30, 32))


def _one_class(root):
  _write_folder(root, classes=('red',))


@pytest.mark.parametrize(
  'make, names',
  [
    (lambda root: os.makedirs(root), 'no train folder'),
    (_no_test, 'no test folder'),
    (_different_classes, "only in train: ['red']; only in test: ['pink']"),
    (_empty_class, 'test/green holds no images'),
    (_text_file, 'train/blue/notes.txt is not an image file'),
    (_broken_image, 'cannot read {root}/train/blue/00.png as an image'),
    (
      _mixed_sizes,
      'images differ in size: {root}/train/blue/00.png is 32x32 (HxW), '
      '{root}/test/green/00.png is 30x32; set --config.image_size=H,W',
    ),
    (_one_class, '1 class folder(s)'),
  ],
  ids=[
    'no_train',
    'no_test',
    'different_classes',
    'empty_class',
    'text_file',
    'broken_image',
    'mixed_sizes',
    'one_class',
  ],
)
def test_bad_image_folders_are_named(tmp_path, make, names):
  root = str(tmp_path / 'folder')
  make(root)
  with pytest.raises(ValueError) as err:
    data.load_dataset(f'imagefolder:{root}', str(tmp_path / 'tfds'))
  message = str(err.value)
  assert message.startswith(f'--config.dataset=imagefolder:{root}: ')
  assert names.format(root=root) in message
  assert '\n' not in message


# Training subsets.


def _split_seed_zero(train, test, info, subset=None):
  return data.make_forget_split('random:0.1', 0, train, test, info, subset=subset)


def test_train_subset_is_stratified_deterministic_and_in_the_digest(data_dir):
  info = data.dataset_info('digits')
  train = data.load_split('digits', 'train', data_dir)
  test = data.load_split('digits', 'test', data_dir)
  subset, positions = data.select_train_subset(train, 200, info.num_classes)
  again, positions_again = data.select_train_subset(train, 200, info.num_classes)
  assert np.array_equal(positions, positions_again)
  assert len(subset) == 200 and np.all(np.diff(positions) > 0)
  assert np.array_equal(subset.index, train.index[positions])
  assert np.array_equal(subset.images, train.images[positions])
  shares = np.bincount(train.labels, minlength=10) * 200 / len(train)
  assert np.all(np.abs(np.bincount(subset.labels, minlength=10) - shares) < 1)
  assert data.select_train_subset(train, 0, 10) == (train, None)
  other = data.select_train_subset(train, 201, info.num_classes)[1]
  digests = {
    _split_seed_zero(train, test, info).digest,
    _split_seed_zero(subset, test, info, positions).digest,
    _split_seed_zero(data.select_train_subset(train, 201, 10)[0], test, info, other).digest,
  }
  assert len(digests) == 3
  # Same sizes and forget positions, different subsets: still different digests.
  shifted = positions.copy()
  shifted[0] += 1 if shifted[0] + 1 not in positions else -1
  assert data.forget_split_digest(
    'digits', np.arange(20), 200, positions
  ) != data.forget_split_digest('digits', np.arange(20), 200, shifted)
  for size in (9, len(train) + 1, -1, 2.5):
    with pytest.raises(ValueError, match='--config.train_subset'):
      data.select_train_subset(train, size, info.num_classes)


def test_prepare_with_a_train_subset(tmp_path, data_dir):
  config = tiny_config(tmp_path, data_dir, train_subset=100)
  setup = experiment.prepare(config)
  assert len(setup.train.labels) == 100
  assert setup.experiment_dir == os.path.join(
    str(tmp_path), 'digits-subset100-cnn', 'random-0.1-split0'
  )
  data_config, training, _ = experiment.sections(config)
  assert experiment.directories(data_config, training, 'digits') == (
    setup.model_dir,
    setup.experiment_dir,
  )
  saved = data.load_forget_split(setup.experiment_dir)
  assert saved.digest == setup.split.digest
  assert np.array_equal(saved.subset, setup.split.subset)
  with open(os.path.join(setup.experiment_dir, 'split.json')) as f:
    assert json.load(f)['train_subset'] == 100
  whole = experiment.prepare(tiny_config(tmp_path, data_dir))
  assert whole.experiment_dir == os.path.join(str(tmp_path), 'digits-cnn', 'random-0.1-split0')
  assert whole.split.subset is None


def test_building_a_builtin_prints_one_line(tmp_path, capfd):
  data.load_split('digits', 'test', str(tmp_path))
  out, err = capfd.readouterr()
  assert out.startswith(f'Preparing digits (first use) into {tmp_path}')
  assert out.endswith(' s.\n') and out.count('\n') == 1
  assert err == ''


# The shared CIFAR-10 archive.


def test_prepare_cifar10_checks_and_extracts_an_archive(tmp_path, monkeypatch):
  _write_folder(tmp_path / 'src' / prepare_cifar10.FOLDER, counts={'train': 1, 'test': 1})
  archive = str(tmp_path / 'cifar10-jpeg.tar.gz')
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tmp_path / 'src' / prepare_cifar10.FOLDER, arcname=prepare_cifar10.FOLDER)
  with pytest.raises(app.UsageError, match='sha256'):
    prepare_cifar10.extract(archive, str(tmp_path / 'dest'))
  monkeypatch.setattr(prepare_cifar10, 'ARCHIVE_SHA256', prepare_cifar10.sha256_of(archive))
  folder = prepare_cifar10.extract(archive, str(tmp_path / 'dest'))
  assert folder == str(tmp_path / 'dest' / prepare_cifar10.FOLDER)
  assert sorted(os.listdir(os.path.join(folder, 'test'))) == sorted(CLASSES)
  assert os.listdir(tmp_path / 'dest') == [prepare_cifar10.FOLDER]  # no staging folder left
  assert data.load_dataset(f'imagefolder:{folder}', str(tmp_path / 'tfds')).info.class_names == (
    tuple(sorted(CLASSES))
  )


@pytest.mark.skipif(not os.path.isfile(SHARED_ARCHIVE), reason='no ../shared/data checkout')
def test_the_shared_archive_is_the_documented_one():
  assert prepare_cifar10.sha256_of(SHARED_ARCHIVE) == prepare_cifar10.ARCHIVE_SHA256
