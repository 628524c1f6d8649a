"""The pre-trained recipe: Original and Retrain fine-tuned from one pre-trained start with a fresh
head (`--config.init`), from the model's own weights file or a public layout."""

import importlib
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

import jaxunlearn
from jaxunlearn import experiment, pretraining, weight_files
from jaxunlearn.config import ConfigError, TrainingConfig
from jaxunlearn.models import create_model, load_pretrained
from tests.conftest import tiny_config

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


def _config(tmp_path, data_dir, **overrides):
  config = jaxunlearn.study_config(methods='ft', plot=False)
  config.update({k: v for k, v in tiny_config(tmp_path / 'wd', data_dir).items() if k in config})
  config.model_kwargs = tiny_config(tmp_path, data_dir).model_kwargs
  config.method.ft.update(epochs=1, batch_size=64)
  config.update(overrides)
  return config


def _pretrained_file(tmp_path, data_dir, seed=5):
  """A weights file of the tiny CNN (its own tree), drawn from `seed`."""
  prepared = experiment.prepare(_config(tmp_path / 'source', data_dir))
  module = prepared.module(seed)
  flat = {
    '.'.join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(module))
  }
  path = str(tmp_path / 'pretrained.npz')
  np.savez(path, **flat)
  return path, flat


def test_original_and_retrain_start_from_the_same_body_and_a_fresh_head(tmp_path, data_dir):
  path, flat = _pretrained_file(tmp_path, data_dir)
  study = jaxunlearn.Study(_config(tmp_path, data_dir, init=path))
  prepared = study.experiment
  assert prepared.init_file['sha256'] == weight_files.file_digest(path)
  assert (
    os.path.basename(prepared.model_dir) == f'digits-cnn-init{prepared.init_file["sha256"][:12]}'
  )
  _, start = prepared.starting_model(0)
  _, again = prepared.starting_model(0)
  _, fresh = prepared.model(0)
  for name in ('convs', 'dense'):
    for leaf, value in (
      start['params'][name].items() if name == 'dense' else start['params'][name][0].items()
    ):
      key = f'{name}.{leaf}' if name == 'dense' else f'{name}.0.{leaf}'
      np.testing.assert_array_equal(value, flat[key])
  # The head is the seed's fresh one, not the file's.
  np.testing.assert_array_equal(
    start['params']['head']['kernel'], fresh['params']['head']['kernel']
  )
  assert not np.array_equal(start['params']['head']['kernel'], flat['head.kernel'])
  np.testing.assert_array_equal(
    start['params']['head']['kernel'], again['params']['head']['kernel']
  )
  study.run()
  assert 'start from the pre-trained weights' in study.table_note()
  original, retrain = study.original(), study.retrain(0)
  assert not np.array_equal(original.variables['params']['dense']['kernel'], flat['dense.kernel'])
  assert study.results()['init_file']['path'] == os.path.abspath(path)
  assert retrain.scores['steps'] > 0


def test_a_public_layout_fills_the_zoo_model():
  path = os.path.join(FIXTURES, 'pretrained_resnet18.safetensors')
  shape, kwargs = (37, 29, 3), {'width': 2, 'stem': 'imagenet'}
  training = TrainingConfig(model='resnet18', init=path, init_layout='torchvision:resnet18')
  module = create_model('resnet18', num_classes=10, input_shape=shape, rngs=nnx.Rngs(3), **kwargs)
  head = np.asarray(module.head.kernel[...])
  experiment.load_init(module, training, shape, kwargs)
  public = load_pretrained(path, 'torchvision:resnet18', input_shape=shape, width=2)
  np.testing.assert_array_equal(module.stem_conv.kernel[...], public.stem_conv.kernel[...])
  np.testing.assert_array_equal(module.layer4[1].bn2.mean[...], public.layer4[1].bn2.mean[...])
  np.testing.assert_array_equal(module.head.kernel[...], head)  # fresh, not the file's 1000 classes


def test_a_public_layout_that_does_not_fit_the_data_is_one_line(tmp_path, data_dir):
  config = _config(
    tmp_path,
    data_dir,
    model='resnet18',
    init=os.path.join(FIXTURES, 'pretrained_resnet18.safetensors'),
    init_layout='torchvision:resnet18',
  )
  config.model_kwargs = {'width': 2, 'stem': 'imagenet'}
  with pytest.raises(ConfigError, match=r"key 'conv1.weight': expected shape \(2, 1, 7, 7\)"):
    experiment.prepare(config)


@pytest.mark.parametrize(
  'overrides,message',
  [
    ({'init': 'x.npz', 'original': 'y.npz'}, 'cannot be given with --config.original'),
    ({'init_layout': 'torchvision:resnet18'}, 'needs --config.init'),
    ({'init': 'MISSING'}, 'no such file or directory'),
  ],
)
def test_bad_init_is_one_line(tmp_path, data_dir, overrides, message):
  overrides = dict(overrides)
  if overrides.get('init') == 'MISSING':
    overrides['init'] = str(tmp_path / 'missing.npz')
  with pytest.raises(ConfigError, match=message):
    jaxunlearn.Study(_config(tmp_path, data_dir, **overrides)).run()


def test_a_body_that_does_not_fit_names_its_leaves(tmp_path, data_dir):
  path, flat = _pretrained_file(tmp_path, data_dir)
  flat['dense.kernel'] = flat['dense.kernel'][:3]
  del flat['convs.0.bias']
  np.savez(path, **flat)
  with pytest.raises(ConfigError) as error:
    experiment.prepare(_config(tmp_path, data_dir, init=path))
  message = str(error.value)
  assert 'convs.0.bias missing' in message and 'dense.kernel has shape (3, 16)' in message


def _rgb_folder(root, size=(32, 32)):
  rng = np.random.default_rng(0)
  for split, count in (('train', 6), ('test', 2)):
    for name in ('cat', 'dog'):
      os.makedirs(root / split / name)
      for k in range(count):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / split / name / f'{k}.png')
  return f'imagefolder:{root}'


@pytest.mark.parametrize(
  'name,fixture,tiny',
  [
    ('cifar10_pretrained_resnet18', 'pretrained_resnet18', {'width': 2}),
    (
      'cifar10_pretrained_vit_b16',
      'pretrained_vit',
      {'patch_size': 8, 'width': 32, 'depth': 2, 'num_heads': 2, 'mlp_dim': 64},
    ),
  ],
)
def test_the_gpu_recipes_build_at_tiny_size_on_cpu(tmp_path, data_dir, name, fixture, tiny):
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  config.update(
    workdir=str(tmp_path / 'wd'),
    data_dir=data_dir,
    dataset=_rgb_folder(tmp_path / 'images'),
    image_size='32,32',
    init=os.path.join(FIXTURES, f'{fixture}.safetensors'),
    batch_size=4,
    num_devices=1,
    compute_dtype='float32',
  )
  config.model_kwargs.update(tiny)
  study = jaxunlearn.Study(config)
  prepared = study.experiment
  assert prepared.init_file['layout'] == config.init_layout
  _, start = prepared.starting_model(0)
  assert start['params']['head']['kernel'].shape[-1] == 2
  study.check_methods()


def test_pretraining_outside_the_subset_writes_weights_a_study_starts_from(tmp_path, data_dir):
  config = tiny_config(tmp_path / 'wd', data_dir)
  config.update(jaxunlearn.config.to_config_dict(pretraining.PretrainConfig(exclude_subset=500)))
  record = pretraining.pretrain(config)
  dataset = jaxunlearn.data.load_dataset('digits', data_dir)
  assert record['num_examples'] == len(dataset.train) - 500
  assert record['path'].endswith('-outside500-s0.safetensors') and os.path.exists(record['path'])
  assert record['sha256'] == weight_files.file_digest(record['path'])
  _, subset = jaxunlearn.data.select_train_subset(dataset.train, 500, 10)
  outside = pretraining.complement(len(dataset.train), subset)
  assert len(np.intersect1d(outside, subset)) == 0 and len(outside) + len(subset) == len(
    dataset.train
  )
  assert pretraining.pretrain(config) == record  # reused, not trained again
  study_config = _config(tmp_path, data_dir, init=record['path'], train_subset=500)
  _, start = experiment.prepare(study_config).starting_model(0)
  found = weight_files.read_weights(record['path'])
  np.testing.assert_array_equal(start['params']['dense']['kernel'], found['dense.kernel'])
