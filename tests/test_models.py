"""Model zoo: shapes, features, BatchNorm train/eval, determinism, functional use, errors.

XLA compiles every new shape once (about a second each on a loaded 2-core CPU), so the tests
share a few tiny configurations, two input shapes and one jitted forward function.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn.features import features_of
from jaxunlearn.models import MODELS, create_model, model_kwargs, set_compute_dtype
from jaxunlearn.state import functionalize

TINY = {
  'mlp': dict(hidden_sizes=(16, 8)),
  'cnn': dict(channels=(4, 8), dense_width=16),
  'resnet18': dict(width=2),
  'vit': dict(patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16),
  'vit_mean': dict(patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16, pooling='mean'),
}
NUM_CLASSES = 5
BATCH = 3
MNIST, CIFAR = (28, 28, 1), (32, 32, 3)


def _build(key, input_shape, seed=0):
  name = 'vit' if key == 'vit_mean' else key
  return create_model(
    name, num_classes=NUM_CLASSES, input_shape=input_shape, rngs=nnx.Rngs(seed), **TINY[key]
  )


@functools.cache
def _pristine(key, input_shape):
  return _build(key, input_shape)


def _model(key, input_shape):
  """A fresh copy of the cached seed-0 model (tests may mutate it)."""
  return nnx.clone(_pristine(key, input_shape))


@functools.cache
def _images(input_shape, seed=0):
  # NumPy draws: a jax.random draw would cost a compile per shape.
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(BATCH,) + input_shape), np.float32)


@nnx.jit(static_argnames='train')
def _forward(model, x, train):
  return features_of(model, x, train=train)[:2]


def _expected_features(key, input_shape):
  h, w, _ = input_shape
  if key == 'mlp':
    return {'dense0': (16,), 'dense1': (8,), 'penultimate': (8,)}
  if key == 'cnn':
    return {
      'conv1': (h // 2, w // 2, 4),
      'conv2': (h // 4, w // 4, 8),
      'dense1': (16,),
      'penultimate': (16,),
    }
  if key == 'resnet18':
    expected = {'stem': (h, w, 2)}
    for stage in range(4):
      size = (-(-h // 2**stage), -(-w // 2**stage))  # 3x3, stride 2, padding 1: ceil(h / 2).
      for block in range(2):
        expected[f'layer{stage + 1}.{block}'] = (*size, 2 * 2**stage)
    expected['penultimate'] = (16,)
    return expected
  tokens = (h // 4) * (w // 4) + (1 if key == 'vit' else 0)
  return {'embed': (tokens, 8), 'block0': (tokens, 8), 'block1': (tokens, 8), 'penultimate': (8,)}


@pytest.mark.parametrize(
  'key,input_shape',
  [
    (key, shape)
    for key in sorted(TINY)
    for shape in (MNIST, CIFAR)
    if (key, shape) != ('vit_mean', MNIST)
  ],
)  # Pooling does not interact with the input shape.
def test_logits_and_feature_shapes_in_order(key, input_shape):
  model = _model(key, input_shape)
  logits, features = _forward(model, _images(input_shape), False)
  assert logits.shape == (BATCH, NUM_CLASSES)
  # Returned through jit: an OrderedDict keeps its order there, a plain dict would be sorted.
  assert isinstance(features, collections.OrderedDict)
  expected = _expected_features(key, input_shape)
  assert list(features) == list(expected)
  assert {k: v.shape for k, v in features.items()} == {k: (BATCH,) + s for k, s in expected.items()}


def test_resnet_layer4_on_28x28_is_4x4():
  # 28 -> 14 -> 7 -> 4: padding 1 on both sides at stride 2, as in PyTorch.
  assert _expected_features('resnet18', MNIST)['layer4.1'][:2] == (4, 4)


def test_logits_alone_equal_logits_with_features():
  model = _model('mlp', MNIST)
  x = _images(MNIST)
  logits, _ = features_of(model, x)[:2]
  np.testing.assert_array_equal(model(x), logits)


def _param_count(name, input_shape, **kwargs):
  abstract = nnx.eval_shape(
    lambda: create_model(name, num_classes=10, input_shape=input_shape, rngs=nnx.Rngs(0), **kwargs)
  )
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def test_parameter_counts_of_standard_sizes():
  # conv1 1*9*32+32, conv2 32*9*64+64, dense 7*7*64*128+128, head 128*10+10.
  assert _param_count('cnn', MNIST) == 320 + 18_496 + 401_536 + 1_290
  # The well-known count of the CIFAR ResNet-18 with 10 classes.
  assert _param_count('resnet18', CIFAR) == 11_173_962
  assert _param_count('mlp', MNIST) == 784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10


@pytest.mark.parametrize(
  'name,width,heads,mlp_dim', [('vit_tiny', 192, 3, 768), ('vit_small', 384, 6, 1536)]
)
def test_vit_presets(name, width, heads, mlp_dim):
  model = nnx.eval_shape(
    lambda: create_model(name, num_classes=10, input_shape=CIFAR, rngs=nnx.Rngs(0))
  )
  assert len(model.blocks) == 12
  assert model.blocks[0].attention.num_heads == heads
  assert model.blocks[0].mlp_in.kernel.shape == (width, mlp_dim)
  assert model.position_embedding.shape == (1, 8 * 8 + 1, width)
  assert model_kwargs(name) == ('patch_size', 'pooling')


@pytest.mark.parametrize('key', sorted(TINY))
def test_models_hold_only_param_and_batchstat(key):
  _, params, batch_stats, rest = nnx.split(_model(key, CIFAR), nnx.Param, nnx.BatchStat, ...)
  assert not jax.tree.leaves(rest)
  assert jax.tree.leaves(params)
  assert bool(jax.tree.leaves(batch_stats)) == (key == 'resnet18')


def _bn_relu(z, mean, var, scale, bias):
  return np.maximum((z - mean) / np.sqrt(var + 1e-5) * scale + bias, 0.0)


def test_batchnorm_train_uses_batch_stats_and_updates_running_averages():
  model = _model('resnet18', CIFAR)
  bn = model.stem_bn
  rng = np.random.default_rng(0)
  scale, bias = rng.normal(size=2).astype(np.float32), rng.normal(size=2).astype(np.float32)
  old_mean = rng.normal(size=2).astype(np.float32)
  old_var = rng.uniform(0.5, 2.0, size=2).astype(np.float32)
  bn.scale[...], bn.bias[...], bn.mean[...], bn.var[...] = scale, bias, old_mean, old_var
  x = _images(CIFAR)
  z = np.asarray(model.stem_conv(x), np.float64)
  batch_mean, batch_var = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))

  _, features = _forward(model, x, True)

  np.testing.assert_allclose(
    features['stem'], _bn_relu(z, batch_mean, batch_var, scale, bias), atol=1e-5
  )
  np.testing.assert_allclose(bn.mean[...], 0.9 * old_mean + 0.1 * batch_mean, rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 * old_var + 0.1 * batch_var, rtol=1e-5)


def test_batchnorm_eval_uses_running_averages_and_keeps_them():
  model = _model('resnet18', CIFAR)
  x = _images(CIFAR)
  _forward(model, x, True)  # Moves every running average away from its init.
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
  z = np.asarray(model.stem_conv(x), np.float64)

  _, features = _forward(model, x, False)

  expected = _bn_relu(
    z,
    before['stem_bn']['mean'],
    before['stem_bn']['var'],
    np.asarray(model.stem_bn.scale[...]),
    np.asarray(model.stem_bn.bias[...]),
  )
  np.testing.assert_allclose(features['stem'], expected, atol=1e-5)
  after = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  jax.tree.map(np.testing.assert_array_equal, before, after)


@pytest.mark.parametrize('key', sorted(TINY))
def test_same_seed_same_model_other_seed_other_model(key):
  x = _images(CIFAR)
  first, second, other = (_build(key, CIFAR, seed=s) for s in (0, 0, 1))
  jax.tree.map(
    np.testing.assert_array_equal,
    nnx.to_pure_dict(nnx.state(first)),
    nnx.to_pure_dict(nnx.state(second)),
  )
  first_logits = _forward(first, x, False)[0]
  np.testing.assert_array_equal(first_logits, _forward(second, x, False)[0])
  np.testing.assert_array_equal(first_logits, _forward(first, x, False)[0])
  assert not np.allclose(first_logits, _forward(other, x, False)[0])


@pytest.mark.parametrize('key', sorted(TINY))
def test_functional_split_merge_under_jit(key):
  model = _model(key, CIFAR)
  x = _images(CIFAR)
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
  template = nnx.eval_shape(lambda: _build(key, CIFAR))

  @jax.jit
  def apply(params, batch_stats, x):
    _, abstract_params, abstract_stats = nnx.split(template, nnx.Param, nnx.BatchStat)
    nnx.replace_by_pure_dict(abstract_params, params)
    nnx.replace_by_pure_dict(abstract_stats, batch_stats)
    m = nnx.merge(graphdef, abstract_params, abstract_stats)
    eval_logits = m(x, train=False)
    train_logits = m(x, train=True)
    return eval_logits, train_logits, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

  eval_logits, train_logits, new_stats = apply(params, batch_stats, x)

  np.testing.assert_allclose(eval_logits, _forward(model, x, False)[0], atol=1e-5)
  if key == 'resnet18':
    np.testing.assert_allclose(train_logits, _forward(model, x, True)[0], atol=1e-5)
    # That module call updated `model`'s running averages exactly like the pure step did.
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
      new_stats,
      nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)),
    )
    assert not np.allclose(new_stats['stem_bn']['mean'], batch_stats['stem_bn']['mean'])
  else:
    # No BatchNorm and no dropout: `train` changes nothing.
    np.testing.assert_array_equal(train_logits, eval_logits)
    assert new_stats == {}


@pytest.mark.parametrize('key', ['resnet18', 'vit'])
def test_bfloat16_compute_keeps_float32_weights_and_outputs(key):
  fns, variables = functionalize(set_compute_dtype(_build(key, CIFAR), 'bfloat16'))
  float32_fns, _ = functionalize(_build(key, CIFAR))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  x = _images(CIFAR)
  (logits, features), _ = jax.jit(functools.partial(fns.apply, train=False, return_features=True))(
    variables, x
  )
  (reference, _), _ = float32_fns.apply(variables, x, train=False, return_features=True)
  assert all(f.dtype == jnp.float32 for f in [logits, *features.values()])
  # Rounded to bfloat16 inside (8 bits of mantissa), so close to but not equal to float32.
  assert not np.array_equal(logits, reference)
  np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.05)


def test_unknown_model_name_names_flag_and_allowed():
  with pytest.raises(ValueError, match=r"--config.model='resnet99'.*cnn.*vit_tiny"):
    create_model('resnet99', num_classes=10, input_shape=CIFAR, rngs=nnx.Rngs(0))


def test_unknown_kwargs_are_named():
  with pytest.raises(ValueError, match=r"\['depth', 'dropout'\].*'cnn'.*'channels'"):
    create_model(
      'cnn',
      num_classes=10,
      input_shape=MNIST,
      rngs=nnx.Rngs(0),
      dropout=0.1,
      depth=3,
      channels=(4,),
    )
  with pytest.raises(ValueError, match=r"\['width'\].*'vit_tiny'"):
    create_model('vit_tiny', num_classes=10, input_shape=CIFAR, rngs=nnx.Rngs(0), width=8)


@pytest.mark.parametrize(
  'name,kwargs,message',
  [
    ('cnn', dict(num_classes=0, input_shape=MNIST), 'num_classes'),
    ('cnn', dict(num_classes=10, input_shape=(28, 28)), 'input_shape'),
    ('cnn', dict(num_classes=10, input_shape=(2, 2, 1)), 'input_shape'),
    ('vit', dict(num_classes=10, input_shape=(30, 30, 3), patch_size=4), 'patch_size 4'),
    ('vit', dict(num_classes=10, input_shape=CIFAR, width=10, num_heads=3), 'num_heads 3'),
    ('vit', dict(num_classes=10, input_shape=CIFAR, pooling='max'), "pooling.*'max'"),
    ('mlp', dict(num_classes=10, input_shape=MNIST, hidden_sizes=()), 'hidden_sizes'),
    ('resnet18', dict(num_classes=10, input_shape=CIFAR, width=0), 'width'),
    ('resnet18', dict(num_classes=10, input_shape=CIFAR, stem='tiny'), "stem.*'tiny'"),
  ],
)
def test_bad_arguments_raise(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    create_model(name, rngs=nnx.Rngs(0), **kwargs)


def test_registry_names():
  assert set(MODELS) == {
    'mlp',
    'cnn',
    'resnet18',
    'resnet34',
    'resnet50',
    'vit',
    'vit_tiny',
    'vit_small',
  }
