"""A user's own NNX model and trained Original through the library: features, LoRA, weight files,
a tiny study, and every bad input refused with one line."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import safetensors.numpy
from flax import nnx, serialization

import jaxunlearn
from jaxunlearn import weight_files
from jaxunlearn.config import ConfigError
from jaxunlearn.features import feature_points, features_of
from jaxunlearn.models import check_model, create_model, lora, resolve
from tests import user_model
from tests.conftest import tiny_config

DIGITS = (8, 8, 1)


def _net(seed=0):
  return user_model.Net(num_classes=10, rngs=nnx.Rngs(seed))


def _images(seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(5, *DIGITS)), jnp.float32)


def test_default_features_equal_a_hand_written_forward():
  model, x = _net(), _images()
  logits, features, _ = features_of(model, x)
  assert list(features) == ['conv1', 'conv2', 'fc1', 'penultimate']
  conv1 = model.conv1(x)
  conv2 = model.conv2(nnx.relu(model.bn1(conv1, use_running_average=True)))
  fc1 = model.fc1(jnp.mean(nnx.relu(conv2), axis=(1, 2)))
  for name, expected in (('conv1', conv1), ('conv2', conv2), ('fc1', fc1)):
    np.testing.assert_allclose(features[name], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(features['penultimate'], nnx.relu(fc1), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(logits, model(x))
  assert isinstance(model.fc2, nnx.Linear)  # unwrapped again after the call


def test_features_by_type_and_by_path_and_replacement():
  model, x = _net(), _images()
  by_type = feature_points(model, DIGITS, 'type:Conv')
  assert [p.name for p in by_type] == ['conv1', 'conv2', 'penultimate']
  points = feature_points(model, DIGITS, 'bn1,hidden=fc2:input')
  assert [(p.name, p.where) for p in points] == [('bn1', 'output'), ('hidden', 'input')] + [
    ('penultimate', 'input')
  ]
  zeros = jnp.zeros(16)
  logits, _, _ = features_of(model, x, spec='fc2:input', replace={'fc2': zeros})
  np.testing.assert_allclose(logits, jnp.broadcast_to(model.fc2.bias[...], logits.shape))


def test_training_mode_updates_batch_stats_through_the_taps():
  model, x = _net(), _images()
  fns, variables = jaxunlearn.state.functionalize(model, feature_points(model, DIGITS))
  (_, features), stats = fns.apply(variables, x, train=True, return_features=True)
  _, plain_stats = fns.apply(variables, x, train=True)
  assert set(features) == {'conv1', 'conv2', 'fc1', 'penultimate'}
  jax.tree.map(np.testing.assert_array_equal, stats, plain_stats)
  assert not np.allclose(stats['bn1']['mean'], variables['batch_stats']['bn1']['mean'])


def _randomized(model):
  for _, node in nnx.iter_graph(model):
    if isinstance(node, lora.LORA_LAYERS):
      b = node.lora_b.kernel if hasattr(node.lora_b, 'kernel') else node.lora_b
      b.set_value(0.1 * jnp.ones_like(b[...]))
  return model


def test_lora_on_a_user_model_starts_equal_and_merges_exactly():
  model, x = _net(), _images()
  targets = lora.lora_targets(
    lora.default_lora_settings('tests.user_model:Net', model, DIGITS).targets,
    model,
    model_name='Net',
    config_key='method.rfa_lora.targets',
  )
  wrapped = lora.add_lora(model, rank=2, alpha=2.0, targets=targets, rngs=nnx.Rngs(1))
  # Every Conv/Linear but the input layer.
  assert {
    lora.features.dotted(p) for p, n in nnx.iter_graph(wrapped) if isinstance(n, lora.LORA_LAYERS)
  } == {
    'conv2',
    'fc1',
    'fc2',
  }
  np.testing.assert_allclose(wrapped(x), model(x), rtol=1e-6, atol=1e-6)
  _randomized(wrapped)
  np.testing.assert_allclose(lora.merge_lora(wrapped)(x), wrapped(x), rtol=1e-5, atol=1e-5)
  assert not np.allclose(wrapped(x), model(x))


class _EinsumNet(nnx.Module):
  def __init__(self, *, num_classes, rngs):
    self.mix = nnx.Einsum('bhwc,cd->bhwd', (1, 6), (6,), rngs=rngs)
    self.head = nnx.Einsum('bd,dk->bk', (6, num_classes), (num_classes,), rngs=rngs)

  def __call__(self, x, train=False):
    return self.head(jnp.mean(nnx.relu(self.mix(x)), axis=(1, 2)))


def test_lora_on_einsum_layers_merges_exactly():
  model, x = _EinsumNet(num_classes=10, rngs=nnx.Rngs(0)), _images()
  wrapped = _randomized(lora.add_lora(model, rank=2, alpha=4.0, rngs=nnx.Rngs(1)))
  assert isinstance(wrapped.mix, lora.LoRAEinsum) and isinstance(wrapped.head, lora.LoRAEinsum)
  np.testing.assert_allclose(lora.merge_lora(wrapped)(x), wrapped(x), rtol=1e-5, atol=1e-5)
  _, features, _ = features_of(model, x)
  assert list(features) == ['mix', 'penultimate']


def _save(model, path):
  state = nnx.state(model)
  pure = nnx.to_pure_dict(state)
  flat = {k: np.asarray(v) for k, v in weight_files._flatten(pure).items()}
  if path.endswith('orbax_state'):
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, state)
  elif path.endswith('orbax_pure'):
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(path, pure)
  elif path.endswith('.msgpack'):
    with open(path, 'wb') as f:
      f.write(serialization.to_bytes(pure))
  elif path.endswith('.npz'):
    np.savez(path, **{k.replace('.', '/'): v for k, v in flat.items()})
  else:
    safetensors.numpy.save_file(flat, path)
  return path


@pytest.mark.parametrize(
  'name', ['orbax_state', 'orbax_pure', 'original.msgpack', 'original.npz', 'original.safetensors']
)
def test_an_original_saved_in_each_format_loads_back(tmp_path, name):
  trained, x = _net(seed=7), _images()
  trained(x, train=True)  # moves the batch statistics away from their initial values
  path = _save(trained, str(tmp_path / name))
  loaded = weight_files.load_into(_net(seed=0), path)
  np.testing.assert_array_equal(loaded(x), trained(x))
  assert weight_files.file_digest(path) == weight_files.file_digest(path)


def test_a_tree_that_does_not_fit_names_every_leaf(tmp_path):
  path = _save(user_model.Net(num_classes=10, rngs=nnx.Rngs(0), width=4), str(tmp_path / 'w.npz'))
  with pytest.raises(ConfigError) as error:
    weight_files.load_into(_net(), path)
  message = str(error.value)
  assert '\n' not in message
  assert 'conv1.kernel has shape (3, 3, 1, 4), expected (3, 3, 1, 8)' in message
  assert 'bn1.mean has shape (4,), expected (8,)' in message
  np.savez(tmp_path / 'x.npz', **{'conv1/kernel': np.zeros((3, 3, 1, 8))})
  with pytest.raises(ConfigError, match=r'fc2.bias missing \(expected \(10,\)\)'):
    weight_files.load_into(_net(), str(tmp_path / 'x.npz'))


@pytest.mark.parametrize(
  'model,message',
  [
    ('tests.no_such_module:Net', "module 'tests.no_such_module' does not import"),
    ('tests.user_model:Missing', "tests.user_model has no 'Missing'"),
    ('tests.user_model:NOT_CALLABLE', 'NOT_CALLABLE is a int, not callable'),
    ('lenet', 'not a zoo model'),
  ],
)
def test_a_model_that_does_not_resolve_is_one_line(model, message):
  with pytest.raises(ConfigError, match=message) as error:
    resolve(model)
  assert '\n' not in str(error.value) and str(error.value).startswith('--config.model=')


def test_a_model_that_breaks_the_contract_is_one_line():
  model = create_model(user_model.WrongShape, num_classes=10, input_shape=DIGITS, rngs=nnx.Rngs(0))
  with pytest.raises(
    ConfigError,
    match=r'expected model\(images \[B, 8, 8, 1\], train=\.\.\.\) -> logits \[B, 10\].*returned .*\(2,\)',
  ):
    check_model(model, 10, DIGITS, 'WrongShape')
  with pytest.raises(
    ConfigError, match="'nope' matches no submodule of the model; its submodules: "
  ):
    feature_points(_net(), DIGITS, 'nope')
  with pytest.raises(ConfigError, match="no submodule of class 'Dense'"):
    feature_points(_net(), DIGITS, 'type:Dense')


def _config(tmp_path, data_dir, **overrides):
  config = jaxunlearn.study_config(methods='ft,rl,salun,sfron,rfa_lora', plot=False)
  config.update({k: v for k, v in tiny_config(tmp_path / 'wd', data_dir).items() if k in config})
  config.model = 'tests.user_model:Net'
  config.model_kwargs = {}
  config.forget = 'class:3'
  for name in ('ft', 'rl', 'salun', 'rfa_lora'):
    config.method[name].update(epochs=1, batch_size=64)
  config.method.sfron.update(iterations=20, batch_size=64, saliency_batch_size=64)
  config.update(overrides)
  return config


def test_a_user_model_and_its_original_go_through_a_study(tmp_path, data_dir):
  original = _save(_net(seed=3), str(tmp_path / 'orbax_state'))
  study = jaxunlearn.Study(_config(tmp_path, data_dir, original=original))
  payload = study.run()
  summary = payload['summary']
  assert set(summary) == {'Original', 'Retrain', 'ft', 'rl', 'salun', 'sfron', 'rfa_lora'}
  for row in summary.values():
    assert np.isfinite(row['FD_r']['mean']) and np.isfinite(row['CKA_retrain_r']['mean'])
  assert summary['rfa_lora']['target_rank/output/class3']['mean'] >= 1
  assert summary['Original']['RTE_s']['mean'] == 0.0  # read, not trained
  model_dir = os.path.dirname(study.experiment_dir)
  assert not [d for d in os.listdir(model_dir) if d.startswith('original_s')]
  assert 'The Original is read from' in study.table_note()
  loaded = weight_files.load_into(_net(), original)
  variables = study.original().variables
  np.testing.assert_array_equal(variables['params']['fc2']['kernel'], loaded.fc2.kernel[...])


def test_a_model_class_and_a_checkpoint_from_python(tmp_path, data_dir):
  original = _save(_net(seed=3), str(tmp_path / 'w.safetensors'))
  config = _config(tmp_path, data_dir, methods='ft')
  study = jaxunlearn.Study(config, model=user_model.Net, original=original)
  study.run()
  assert study.training.model == 'tests.user_model:Net'
  assert study.experiment.original_file['sha256'] == weight_files.file_digest(original)


@pytest.mark.parametrize(
  'overrides,message',
  [
    ({'original': '/no/such/file.npz'}, 'no such file or directory'),
    ({'original': 'weights.pt'}, "unknown format '.pt'"),
    ({'model': 'tests.user_model:WrongShape'}, 'returned'),
    ({'features': 'fc9'}, "'fc9' matches no submodule"),
  ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, data_dir, overrides, message):
  if overrides.get('original') == 'weights.pt':
    overrides = {'original': str(tmp_path / 'weights.pt')}
    (tmp_path / 'weights.pt').write_bytes(b'')
  with pytest.raises(ConfigError, match=message):
    jaxunlearn.Study(_config(tmp_path, data_dir, **overrides)).run()
  assert not os.path.exists(tmp_path / 'wd') or not any(
    name.endswith('-split0') for _, dirs, _ in os.walk(tmp_path / 'wd') for name in dirs
  )


def test_the_binary_exits_2_with_one_line(tmp_path):
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.unlearn',
      '--config.model=tests.user_model:Missing',
      f'--config.workdir={tmp_path}',
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'PYTHONPATH': os.getcwd()},
  )
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1] == (
    "error: --config.model='tests.user_model:Missing': tests.user_model has no 'Missing'."
  )
  assert not any(os.scandir(tmp_path))
  shutil.rmtree(tmp_path)
