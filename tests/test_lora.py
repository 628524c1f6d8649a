"""LoRA branches: zero-init equivalence, LoRAParam-only training, residual collection, merging."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn.models import create_model
from jaxunlearn.models.lora import (LORA_LAYERS, LoRAConv, LoRALinear, add_lora, lora_residuals,
                                    merge_lora)

TINY = {
    'mlp': dict(hidden_sizes=(16, 8)),
    'cnn': dict(channels=(4, 8), dense_width=16),
    'resnet18': dict(width=2),
    'vit': dict(patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16),
}
CIFAR = (32, 32, 3)
NUM_CLASSES = 5
RANK, ALPHA = 2, 6.0
SCALE = ALPHA / RANK


@functools.cache
def _pristine(key):
  return create_model(key, num_classes=NUM_CLASSES, input_shape=CIFAR, rngs=nnx.Rngs(0),
                      **TINY[key])


def _model(key):
  return nnx.clone(_pristine(key))


@functools.cache
def _images(seed=0, shape=(3,) + CIFAR):
  # NumPy draws: a jax.random draw would cost a compile per shape.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), np.float32)


@nnx.jit(static_argnames='train')
def _forward(model, x, train=False):
  return model(x, train=train, return_features=True)


def _paths(model, types):
  return {'.'.join(map(str, path)) for path, node in nnx.iter_graph(model)
          if isinstance(node, types)}


def _randomize_lora(model, seed=0):
  """Gives every B random values (A has its random init), so that every branch contributes."""
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, LORA_LAYERS):
      shape = node.lora_b.kernel.shape
      node.lora_b.kernel[...] = rng.normal(scale=0.3, size=shape).astype(np.float32)
  return model


@pytest.mark.parametrize('key', sorted(TINY))
def test_fresh_lora_model_equals_original(key):
  model = _model(key)
  lora_model = add_lora(model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  assert _paths(lora_model, LORA_LAYERS) == _paths(model, (nnx.Linear, nnx.Conv))
  logits, features = _forward(model, _images())
  lora_logits, lora_features = _forward(lora_model, _images())
  np.testing.assert_array_equal(lora_logits, logits)
  assert list(lora_features) == list(features)
  for name in features:
    np.testing.assert_array_equal(lora_features[name], features[name])


def test_lora_weights_are_lora_params_with_peft_shapes():
  model = create_model('cnn', num_classes=NUM_CLASSES, input_shape=(28, 28, 1),
                       rngs=nnx.Rngs(0), **TINY['cnn'])
  lora_model = add_lora(model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  _, lora, params, batch_stats = nnx.split(lora_model, nnx.LoRAParam, nnx.Param, nnx.BatchStat)
  shapes = {'/'.join(map(str, path)): value.shape
            for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(lora))
            for path in [tuple(k.key for k in path)]}
  assert shapes == {
      'convs/0/lora_a/kernel': (3, 3, 1, RANK), 'convs/0/lora_b/kernel': (1, 1, RANK, 4),
      'convs/1/lora_a/kernel': (3, 3, 4, RANK), 'convs/1/lora_b/kernel': (1, 1, RANK, 8),
      'dense/lora_a/kernel': (7 * 7 * 8, RANK), 'dense/lora_b/kernel': (RANK, 16),
      'head/lora_a/kernel': (16, RANK), 'head/lora_b/kernel': (RANK, NUM_CLASSES)}
  assert not jax.tree.leaves(batch_stats)
  # The base weights are the original ones, now under '.base'.
  np.testing.assert_array_equal(nnx.to_pure_dict(params)['head']['base']['kernel'],
                                model.head.kernel[...])
  # PEFT's A init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); B starts at zero.
  a = np.asarray(lora_model.dense.lora_a.kernel[...])
  assert 0.8 / np.sqrt(392) < np.abs(a).max() <= 1 / np.sqrt(392)
  assert not np.any(np.asarray(lora_model.dense.lora_b.kernel[...]))


def test_add_lora_returns_an_independent_copy():
  model = _model('mlp')
  lora_model = add_lora(model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  lora_model.head.base.kernel[...] = lora_model.head.base.kernel[...] + 1.0
  np.testing.assert_array_equal(model.head.kernel[...], _pristine('mlp').head.kernel[...])
  assert not _paths(model, LORA_LAYERS)


def test_linear_branch_and_residual_match_hand_computation():
  model = _model('mlp')
  lora_model = _randomize_lora(add_lora(model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1),
                                        targets=lambda path, _: path == ('head',)))
  assert _paths(lora_model, LORA_LAYERS) == {'head'}
  x = _images()
  (logits, features), intermediates = nnx.capture(lora_model, nnx.Intermediate)(
      x, return_features=True)
  h = np.asarray(features['penultimate'], np.float64)
  head = lora_model.head
  a, b = np.asarray(head.lora_a.kernel[...]), np.asarray(head.lora_b.kernel[...])
  expected_residual = SCALE * h @ a @ b
  np.testing.assert_allclose(lora_residuals(intermediates)['head'], expected_residual, atol=1e-5)
  expected_logits = h @ np.asarray(head.base.kernel[...]) + np.asarray(head.base.bias[...])
  np.testing.assert_allclose(logits, expected_logits + expected_residual, atol=1e-5)


def test_conv_branch_is_strided_conv_a_then_1x1_b():
  conv = _model('resnet18').layer2[0].conv1  # 3x3, stride 2, padding 1, 2 -> 4 channels.
  lora_conv = _randomize_lora(add_lora(conv, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)))
  assert isinstance(lora_conv, LoRAConv)
  x = _images(shape=(3, 16, 16, 2))
  out, intermediates = nnx.capture(lora_conv, nnx.Intermediate)(x)
  a_out = jax.lax.conv_general_dilated(x, lora_conv.lora_a.kernel[...], (2, 2),
                                       ((1, 1), (1, 1)),
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  b = np.asarray(lora_conv.lora_b.kernel[...])[0, 0]
  expected_residual = SCALE * np.asarray(a_out, np.float64) @ b
  assert expected_residual.shape == (3, 8, 8, 4)
  np.testing.assert_allclose(lora_residuals(intermediates)[''], expected_residual, atol=1e-5)
  np.testing.assert_allclose(out, conv(x) + expected_residual, atol=1e-5)


def _cross_entropy(model, x, labels):
  return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()


def test_one_sgd_step_moves_only_lora_params_and_matches_hand_gradient():
  learning_rate = 0.5
  lora_model = add_lora(_model('mlp'), rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  x, labels = _images(), jnp.array([0, 3, 4])
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(lora_model)))
  logits, features = lora_model(x, return_features=True)
  optimizer = nnx.Optimizer(lora_model, optax.sgd(learning_rate), wrt=nnx.LoRAParam)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(_cross_entropy, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, x, labels)
    optimizer.update(model, grads)

  step(lora_model, optimizer)

  after = nnx.to_pure_dict(nnx.state(lora_model))
  frozen_after = jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(nnx.state(lora_model, nnx.Not(nnx.LoRAParam))))
  assert len(frozen_after) == 6  # Kernel and bias of three Linear layers.
  for path, value in frozen_after:
    np.testing.assert_array_equal(value, _get(before, path))
  # With B = 0 the gradient of every A is zero, and every B moves.
  for layer, old in ((lora_model.hidden[0], before['hidden'][0]),
                     (lora_model.hidden[1], before['hidden'][1]),
                     (lora_model.head, before['head'])):
    np.testing.assert_array_equal(layer.lora_a.kernel[...], old['lora_a']['kernel'])
    assert np.abs(np.asarray(layer.lora_b.kernel[...])).max() > 1e-4
  # The head's B gradient by hand: scale * (h A)^T (softmax - onehot) / batch.
  h = np.asarray(features['penultimate'], np.float64)
  probs = np.asarray(jax.nn.softmax(logits), np.float64)
  dlogits = (probs - np.eye(NUM_CLASSES)[np.asarray(labels)]) / len(labels)
  grad_b = SCALE * (h @ before['head']['lora_a']['kernel']).T @ dlogits
  np.testing.assert_allclose(after['head']['lora_b']['kernel'], -learning_rate * grad_b, atol=1e-6)


def _get(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


def test_functional_gradient_over_lora_pure_dict_under_jit():
  lora_model = _randomize_lora(add_lora(_model('mlp'), rank=RANK, alpha=ALPHA,
                                        rngs=nnx.Rngs(1)))
  x, labels = _images(), jnp.array([0, 3, 4])
  graphdef, lora, frozen, batch_stats = nnx.split(lora_model, nnx.LoRAParam, nnx.Param,
                                                  nnx.BatchStat)

  @jax.jit
  def grad_fn(lora_values):
    state = nnx.clone(lora)
    nnx.replace_by_pure_dict(state, lora_values)
    return jax.grad(lambda s: _cross_entropy(nnx.merge(graphdef, s, frozen, batch_stats), x,
                                             labels))(state)

  grads = nnx.to_pure_dict(grad_fn(nnx.to_pure_dict(lora)))
  assert set(grads) == {'hidden', 'head'}
  assert set(grads['head']) == {'lora_a', 'lora_b'}
  # The head's B gradient by hand: scale * (h A)^T (softmax - onehot) / batch.
  logits, features = lora_model(x, return_features=True)
  h = np.asarray(features['penultimate'], np.float64)
  dlogits = (np.asarray(jax.nn.softmax(logits), np.float64)
             - np.eye(NUM_CLASSES)[np.asarray(labels)]) / len(labels)
  expected = SCALE * (h @ np.asarray(lora_model.head.lora_a.kernel[...])).T @ dlogits
  np.testing.assert_allclose(grads['head']['lora_b']['kernel'], expected, rtol=1e-4, atol=1e-6)


def test_residuals_collected_with_capture_under_jit_leave_no_state():
  lora_model = _randomize_lora(add_lora(_model('cnn'), rank=RANK, alpha=ALPHA,
                                        rngs=nnx.Rngs(1)))
  graphdef, lora, frozen = nnx.split(lora_model, nnx.LoRAParam, nnx.Param)
  x = _images()

  @jax.jit
  def apply(lora, frozen):
    model = nnx.merge(graphdef, lora, frozen)
    (logits, features), intermediates = nnx.capture(model, nnx.Intermediate)(
        x, return_features=True)
    return features, lora_residuals(intermediates)

  features, residuals = apply(lora, frozen)
  assert set(residuals) == {'convs.0', 'convs.1', 'dense', 'head'}
  head = lora_model.head
  np.testing.assert_allclose(
      residuals['head'],
      SCALE * features['penultimate'] @ head.lora_a.kernel[...] @ head.lora_b.kernel[...],
      atol=1e-5)
  first_conv = lora_model.convs[0]
  np.testing.assert_allclose(residuals['convs.0'], first_conv(x) - first_conv.base(x), atol=1e-5)
  nnx.capture(lora_model, nnx.Intermediate)(x)
  nnx.split(lora_model, nnx.LoRAParam, nnx.Param, nnx.BatchStat)  # Exhaustive: nothing left.


def test_residual_is_the_latest_call_and_plain_calls_leave_no_state():
  lora_model = _randomize_lora(add_lora(_model('mlp'), rank=RANK, alpha=ALPHA,
                                        rngs=nnx.Rngs(1)))
  x, other_x = _images(), _images(seed=1)

  def two_calls(model):
    model(other_x)
    return model(x, return_features=True)

  (_, features), intermediates = nnx.capture(two_calls, nnx.Intermediate)(lora_model)
  residuals = lora_residuals(intermediates)
  assert set(residuals) == {'hidden.0', 'hidden.1', 'head'}
  head = lora_model.head
  np.testing.assert_allclose(
      residuals['head'],
      SCALE * features['penultimate'] @ head.lora_a.kernel[...] @ head.lora_b.kernel[...],
      atol=1e-5)
  lora_model(x)
  _forward(lora_model, x)
  _, _, _, _, rest = nnx.split(lora_model, nnx.LoRAParam, nnx.Param, nnx.BatchStat, ...)
  assert not jax.tree.leaves(rest)


@pytest.mark.parametrize('key', sorted(TINY))
def test_merged_model_equals_lora_model_and_has_original_architecture(key):
  model = _model(key)
  lora_model = _randomize_lora(add_lora(model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)))
  x = _images()
  lora_logits, lora_features = _forward(lora_model, x)
  assert not np.allclose(lora_logits, _forward(model, x)[0], atol=1e-3)

  merged = merge_lora(lora_model)

  assert nnx.graphdef(merged) == nnx.graphdef(model)
  _, params, batch_stats, rest = nnx.split(merged, nnx.Param, nnx.BatchStat, ...)
  assert not jax.tree.leaves(rest)
  assert not jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))
  merged_logits, merged_features = _forward(merged, x)
  # float32 sums in another order: agreement to 1e-5, absolute and relative.
  np.testing.assert_allclose(merged_logits, lora_logits, rtol=1e-5, atol=1e-5)
  for name in lora_features:
    np.testing.assert_allclose(merged_features[name], lora_features[name], rtol=1e-5, atol=1e-5)
  # The LoRA model is left as it was.
  np.testing.assert_array_equal(_forward(lora_model, x)[0], lora_logits)


def test_targets_pick_attention_query_and_value():
  lora_model = add_lora(_model('vit'), rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1),
                        targets=lambda path, _: path[-1] in ('query', 'value'))
  assert _paths(lora_model, LORA_LAYERS) == {
      f'blocks.{i}.attention.{name}' for i in range(2) for name in ('query', 'value')}
  assert _paths(lora_model, LoRALinear) == _paths(lora_model, LORA_LAYERS)


@pytest.mark.parametrize('kwargs,message', [
    (dict(rank=0, alpha=1.0), 'rank must be a positive int, got 0'),
    (dict(rank=2, alpha=0.0), 'alpha must be > 0, got 0.0'),
    (dict(rank=2, alpha=1.0, targets=lambda path, _: False), 'selected no'),
])
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    add_lora(_model('mlp'), rngs=nnx.Rngs(1), **kwargs)


def test_wrapping_twice_or_grouped_convs_raise():
  lora_model = add_lora(_model('mlp'), rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match=r"already has LoRA branches.*merge_lora"):
    add_lora(lora_model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  grouped = nnx.Conv(4, 4, (3, 3), feature_group_count=2,
                     kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='feature_group_count=2'):
    add_lora(grouped, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
