"""LoRA branches: zero-init equivalence, LoRAParam-only training, residual collection, merging,
the functional (ModelFns) form and targets from config strings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn.features import features_of
from jaxunlearn.metrics import trainable_fraction, tree_bytes
from jaxunlearn.models import create_model
from jaxunlearn.models.lora import (
  LORA_LAYERS,
  TARGET_PRESETS,
  LoRAConv,
  add_lora,
  add_lora_variables,
  base_variables,
  default_lora_settings,
  lora_layer_paths,
  lora_residuals,
  lora_targets,
  merge_lora,
  merge_lora_variables,
)
from jaxunlearn.state import functionalize

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
  return create_model(
    key, num_classes=NUM_CLASSES, input_shape=CIFAR, rngs=nnx.Rngs(0), **TINY[key]
  )


def _model(key):
  return nnx.clone(_pristine(key))


@functools.cache
def _images(seed=0, shape=(3,) + CIFAR):
  # NumPy draws: a jax.random draw would cost a compile per shape.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), np.float32)


@nnx.jit(static_argnames='train')
def _forward(model, x, train=False):
  return features_of(model, x, train=train)[:2]


def _with_intermediates(model, x):
  return features_of(model, x)


def _paths(model, types):
  return {
    '.'.join(map(str, path)) for path, node in nnx.iter_graph(model) if isinstance(node, types)
  }


def _randomize_lora(model, seed=0):
  """Gives every B random values (A has its random init), so that every branch contributes."""
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, LORA_LAYERS):
      shape = node.lora_b.kernel.shape
      node.lora_b.kernel[...] = rng.normal(scale=0.3, size=shape).astype(np.float32)
  return model


@functools.cache
def _plain_model(key):
  """The tiny model with random BatchNorm scales, biases and running statistics."""
  model = _model(key)
  rng = np.random.default_rng(7)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      size = node.num_features
      node.mean[...] = rng.normal(scale=0.5, size=size).astype(np.float32)
      node.var[...] = rng.uniform(0.5, 2.0, size=size).astype(np.float32)
      node.scale[...] = rng.uniform(0.5, 1.5, size=size).astype(np.float32)
      node.bias[...] = rng.normal(scale=0.2, size=size).astype(np.float32)
  return model


@functools.cache
def _plain(key):
  return functionalize(_plain_model(key))


@functools.cache
def _jitted_apply(fns, train):
  return jax.jit(lambda variables, x: fns.apply(variables, x, train=train, return_features=True))


def _apply(fns, variables, x, train=False):
  """((logits, features), new batch_stats); one compile per (fns, train)."""
  return _jitted_apply(fns, train)(variables, x)


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == e.dtype
    np.testing.assert_array_equal(a, e)


def _assert_same_bits(actual, expected):
  """Equal float32 bit patterns (assert_array_equal alone would take -0.0 for +0.0)."""
  np.testing.assert_array_equal(
    np.asarray(actual, np.float32).view(np.uint32), np.asarray(expected, np.float32).view(np.uint32)
  )


@pytest.mark.parametrize('key', sorted(TINY))
def test_fresh_lora_model_equals_original_bit_for_bit_through_model_fns(key):
  # Holds on CPU. On a GPU, XLA may compile the base matmul or conv differently once an add
  # follows it: an H100 gave relative differences up to 1e-6 (float32) or 4e-4 (TF32).
  fns, variables = _plain(key)
  lora_fns, lora_variables = add_lora_variables(
    fns, variables, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)
  )
  lora_model = lora_fns.module(lora_variables)
  assert _paths(lora_model, LORA_LAYERS) == _paths(_plain_model(key), (nnx.Linear, nnx.Conv))
  # Exactly the adapters are nnx.LoRAParam, so an optimiser can be given only them.
  types = {
    '/'.join(str(k.key) for k in path): kind
    for path, kind in jax.tree_util.tree_leaves_with_path(lora_fns.param_types)
  }
  assert {p for p, kind in types.items() if kind is nnx.LoRAParam} == {
    p for p in types if p.endswith(('lora_a/kernel', 'lora_b/kernel'))
  }
  assert all(kind in (nnx.Param, nnx.LoRAParam) for kind in types.values())

  (logits, features), batch_stats = _apply(fns, variables, _images())
  (lora_logits, lora_features), lora_batch_stats = _apply(lora_fns, lora_variables, _images())
  _assert_same_bits(lora_logits, logits)
  assert list(lora_features) == list(features)
  for name in features:
    _assert_same_bits(lora_features[name], features[name])
  # Eval mode normalises with the running statistics and leaves them as they were.
  _assert_trees_equal(lora_batch_stats, variables['batch_stats'])
  _assert_trees_equal(batch_stats, variables['batch_stats'])


def test_lora_weights_are_lora_params_with_peft_shapes():
  model = create_model(
    'cnn', num_classes=NUM_CLASSES, input_shape=(28, 28, 1), rngs=nnx.Rngs(0), **TINY['cnn']
  )
  lora_model = add_lora(model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  _, lora, params, batch_stats = nnx.split(lora_model, nnx.LoRAParam, nnx.Param, nnx.BatchStat)
  shapes = {
    '/'.join(map(str, path)): value.shape
    for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(lora))
    for path in [tuple(k.key for k in path)]
  }
  assert shapes == {
    'convs/0/lora_a/kernel': (3, 3, 1, RANK),
    'convs/0/lora_b/kernel': (1, 1, RANK, 4),
    'convs/1/lora_a/kernel': (3, 3, 4, RANK),
    'convs/1/lora_b/kernel': (1, 1, RANK, 8),
    'dense/lora_a/kernel': (7 * 7 * 8, RANK),
    'dense/lora_b/kernel': (RANK, 16),
    'head/lora_a/kernel': (16, RANK),
    'head/lora_b/kernel': (RANK, NUM_CLASSES),
  }
  assert not jax.tree.leaves(batch_stats)
  # The base weights are the original ones, now under '.base'.
  np.testing.assert_array_equal(
    nnx.to_pure_dict(params)['head']['base']['kernel'], model.head.kernel[...]
  )
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
  lora_model = _randomize_lora(
    add_lora(
      model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1), targets=lambda path, _: path == ('head',)
    )
  )
  assert _paths(lora_model, LORA_LAYERS) == {'head'}
  x = _images()
  logits, features, intermediates = _with_intermediates(lora_model, x)
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
  a_out = jax.lax.conv_general_dilated(
    x,
    lora_conv.lora_a.kernel[...],
    (2, 2),
    ((1, 1), (1, 1)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
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
  logits, features = features_of(lora_model, x)[:2]
  optimizer = nnx.Optimizer(lora_model, optax.sgd(learning_rate), wrt=nnx.LoRAParam)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(_cross_entropy, argnums=nnx.DiffState(0, nnx.LoRAParam))(model, x, labels)
    optimizer.update(model, grads)

  step(lora_model, optimizer)

  after = nnx.to_pure_dict(nnx.state(lora_model))
  frozen_after = jax.tree_util.tree_leaves_with_path(
    nnx.to_pure_dict(nnx.state(lora_model, nnx.Not(nnx.LoRAParam)))
  )
  assert len(frozen_after) == 6  # Kernel and bias of three Linear layers.
  for path, value in frozen_after:
    np.testing.assert_array_equal(value, _get(before, path))
  # With B = 0 the gradient of every A is zero, and every B moves.
  for layer, old in (
    (lora_model.hidden[0], before['hidden'][0]),
    (lora_model.hidden[1], before['hidden'][1]),
    (lora_model.head, before['head']),
  ):
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
  lora_model = _randomize_lora(add_lora(_model('mlp'), rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)))
  x, labels = _images(), jnp.array([0, 3, 4])
  graphdef, lora, frozen, batch_stats = nnx.split(
    lora_model, nnx.LoRAParam, nnx.Param, nnx.BatchStat
  )

  @jax.jit
  def grad_fn(lora_values):
    state = nnx.clone(lora)
    nnx.replace_by_pure_dict(state, lora_values)
    return jax.grad(
      lambda s: _cross_entropy(nnx.merge(graphdef, s, frozen, batch_stats), x, labels)
    )(state)

  grads = nnx.to_pure_dict(grad_fn(nnx.to_pure_dict(lora)))
  assert set(grads) == {'hidden', 'head'}
  assert set(grads['head']) == {'lora_a', 'lora_b'}
  # The head's B gradient by hand: scale * (h A)^T (softmax - onehot) / batch.
  logits, features = features_of(lora_model, x)[:2]
  h = np.asarray(features['penultimate'], np.float64)
  dlogits = (
    np.asarray(jax.nn.softmax(logits), np.float64) - np.eye(NUM_CLASSES)[np.asarray(labels)]
  ) / len(labels)
  expected = SCALE * (h @ np.asarray(lora_model.head.lora_a.kernel[...])).T @ dlogits
  np.testing.assert_allclose(grads['head']['lora_b']['kernel'], expected, rtol=1e-4, atol=1e-6)


def test_residuals_collected_with_capture_under_jit_leave_no_state():
  lora_model = _randomize_lora(add_lora(_model('cnn'), rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)))
  graphdef, lora, frozen = nnx.split(lora_model, nnx.LoRAParam, nnx.Param)
  x = _images()

  @jax.jit
  def apply(lora, frozen):
    model = nnx.merge(graphdef, lora, frozen)
    logits, features, intermediates = _with_intermediates(model, x)
    return features, lora_residuals(intermediates)

  features, residuals = apply(lora, frozen)
  assert set(residuals) == {'convs.0', 'convs.1', 'dense', 'head'}
  head = lora_model.head
  np.testing.assert_allclose(
    residuals['head'],
    SCALE * features['penultimate'] @ head.lora_a.kernel[...] @ head.lora_b.kernel[...],
    atol=1e-5,
  )
  first_conv = lora_model.convs[0]
  np.testing.assert_allclose(residuals['convs.0'], first_conv(x) - first_conv.base(x), atol=1e-5)
  nnx.capture(lora_model, nnx.Intermediate)(x)
  nnx.split(lora_model, nnx.LoRAParam, nnx.Param, nnx.BatchStat)  # Exhaustive: nothing left.


def test_residual_is_the_latest_call_and_plain_calls_leave_no_state():
  lora_model = _randomize_lora(add_lora(_model('mlp'), rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)))
  x, other_x = _images(), _images(seed=1)

  def two_calls(model):
    model(other_x)
    return model(x)

  _, intermediates = nnx.capture(two_calls, nnx.Intermediate)(lora_model)
  residuals = lora_residuals(intermediates)
  features = features_of(lora_model, x)[1]
  assert set(residuals) == {'hidden.0', 'hidden.1', 'head'}
  head = lora_model.head
  np.testing.assert_allclose(
    residuals['head'],
    SCALE * features['penultimate'] @ head.lora_a.kernel[...] @ head.lora_b.kernel[...],
    atol=1e-5,
  )
  lora_model(x)
  _forward(lora_model, x)
  _, _, _, _, rest = nnx.split(lora_model, nnx.LoRAParam, nnx.Param, nnx.BatchStat, ...)
  assert not jax.tree.leaves(rest)


@pytest.mark.parametrize(
  'key,spec',
  [('mlp', 'all'), ('cnn', 'all'), ('resnet18', 'all'), ('vit', 'all'), ('vit', 'attention_qv')],
)
def test_merged_variables_equal_lora_model_and_load_with_the_original_fns(key, spec):
  # 'all' on resnet18 includes the stride-2 3x3 convs (padding 1) and 1x1 shortcut convs.
  plain_model = _plain_model(key)
  fns, variables = _plain(key)
  targets = lora_targets(spec, plain_model, model_name=key, config_key='targets')
  lora_model = _randomize_lora(
    add_lora(plain_model, rank=RANK, alpha=ALPHA, targets=targets, rngs=nnx.Rngs(1))
  )
  lora_fns, lora_variables = functionalize(lora_model)
  x = _images()
  (lora_logits, lora_features), _ = _apply(lora_fns, lora_variables, x)
  assert not np.allclose(lora_logits, _apply(fns, variables, x)[0][0], atol=1e-3)

  merged = jax.jit(functools.partial(merge_lora_variables, lora_fns))(lora_variables)

  assert jax.tree.structure(merged) == jax.tree.structure(variables)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), merged) == jax.tree.map(
    lambda a: (a.shape, a.dtype), variables
  )
  _assert_trees_equal(merged['batch_stats'], variables['batch_stats'])
  (merged_logits, merged_features), _ = _apply(fns, merged, x)  # The original's fns.
  # float32 sums in another order: agreement to 1e-5, absolute and relative (on CPU; on a GPU
  # only with float32 matmuls: its default TF32 ones gave 1e-3 relative on an H100).
  np.testing.assert_allclose(merged_logits, lora_logits, rtol=1e-5, atol=1e-5)
  for name in lora_features:
    np.testing.assert_allclose(merged_features[name], lora_features[name], rtol=1e-5, atol=1e-5)
  # The frozen base (the teacher) is exactly the original's variables.
  _assert_trees_equal(base_variables(lora_fns, lora_variables), variables)


@pytest.mark.parametrize('key', sorted(TINY))
def test_merge_lora_gives_the_original_architecture_and_leaves_the_lora_model(key):
  model = _model(key)
  lora_model = _randomize_lora(add_lora(model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)))
  before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(lora_model)))

  merged = merge_lora(lora_model)

  assert nnx.graphdef(merged) == nnx.graphdef(model)
  _, _, _, rest = nnx.split(merged, nnx.Param, nnx.BatchStat, ...)
  assert not jax.tree.leaves(rest)
  assert not jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))
  _assert_trees_equal(nnx.to_pure_dict(nnx.state(lora_model)), before)


@pytest.mark.parametrize(
  'padding', ['SAME', 'VALID', 'CIRCULAR', ((1, 1), (1, 1)), ((0, 1), (2, 0))]
)
def test_merged_strided_conv_equals_lora_conv(padding):
  # Exact because A has the base's strides and padding and B is a 1x1, stride-1 conv: B(A(x)) is
  # the conv of x with the kernel A @ B. 'SAME' at stride 2 pads by the input size's parity.
  conv = nnx.Conv(3, 5, (3, 3), strides=2, padding=padding, rngs=nnx.Rngs(0))
  lora_conv = _randomize_lora(add_lora(conv, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)))
  merged = merge_lora(lora_conv)
  assert isinstance(merged, nnx.Conv) and merged.strides == 2 and merged.padding == padding
  for size in (9, 10):
    x = _images(shape=(2, size, size, 3))
    lora_out = lora_conv(x)
    assert not np.allclose(lora_out, conv(x), atol=1e-3)
    np.testing.assert_allclose(merged(x), lora_out, rtol=1e-5, atol=1e-5)


def test_teacher_and_student_features_in_one_jitted_step():
  fns, variables = _plain('cnn')
  settings = default_lora_settings('cnn')
  targets = lora_targets(
    settings.targets, _plain_model('cnn'), model_name='cnn', config_key='targets'
  )
  lora_fns, lora_variables = add_lora_variables(
    fns, variables, rank=settings.rank, alpha=settings.alpha, targets=targets, rngs=nnx.Rngs(1)
  )
  lora_variables = functionalize(_randomize_lora(lora_fns.module(lora_variables)))[1]

  @jax.jit
  def features(lora_variables, x):
    teacher = base_variables(lora_fns, lora_variables)
    (_, teacher_features), _ = fns.apply(teacher, x, train=False, return_features=True)
    (_, student_features), _ = lora_fns.apply(lora_variables, x, train=False, return_features=True)
    return teacher_features, student_features

  teacher_features, student_features = features(lora_variables, _images())
  (_, expected_teacher), _ = _apply(fns, variables, _images())
  (_, expected_student), _ = _apply(lora_fns, lora_variables, _images())
  for name in expected_teacher:
    np.testing.assert_array_equal(teacher_features[name], expected_teacher[name])
    np.testing.assert_allclose(student_features[name], expected_student[name], rtol=1e-6, atol=1e-6)
  assert not np.allclose(student_features['dense1'], teacher_features['dense1'], atol=1e-3)


def test_student_bn_in_eval_mode_uses_and_keeps_the_original_running_statistics():
  fns, variables = _plain('resnet18')
  lora_fns, lora_variables = add_lora_variables(
    fns, variables, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)
  )
  x = _images()
  (logits, _), eval_stats = _apply(lora_fns, lora_variables, x)
  _assert_trees_equal(eval_stats, variables['batch_stats'])
  # train=True would normalise with the batch's statistics (so even with B = 0 the student is
  # not the teacher) and move the running averages.
  (train_logits, _), train_stats = _apply(lora_fns, lora_variables, x, train=True)
  assert not np.allclose(train_logits, logits, atol=1e-3)
  assert not np.allclose(
    train_stats['stem_bn']['mean'], variables['batch_stats']['stem_bn']['mean']
  )


def test_the_trainable_fraction_is_the_adapters_share_of_the_weights():
  fns, variables = _plain('resnet18')
  lora_fns, lora_variables = add_lora_variables(
    fns, variables, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1)
  )
  params = lora_variables['params']
  is_lora = lambda kind: issubclass(kind, nnx.LoRAParam)
  lora_bytes = sum(
    tree_bytes(leaf)
    for leaf, kind in zip(jax.tree.leaves(params), jax.tree.leaves(lora_fns.param_types))
    if is_lora(kind)
  )
  assert 0 < lora_bytes < tree_bytes(params)
  # All leaves are float32, so the byte ratio is the parameter fraction.
  assert trainable_fraction(params, lora_fns.param_types, is_lora) == pytest.approx(
    lora_bytes / tree_bytes(params), rel=1e-12
  )


def _selected(spec, key):
  model = _model(key)
  targets = lora_targets(spec, model, model_name=key, config_key='method.rfa_lora.targets')
  return _paths(
    add_lora(model, rank=RANK, alpha=ALPHA, targets=targets, rngs=nnx.Rngs(1)), LORA_LAYERS
  )


BLOCK_CONVS = {f'layer{s}.{b}.conv{c}' for s in range(1, 5) for b in range(2) for c in (1, 2)}
ATTENTION = ('query', 'key', 'value', 'out')


@pytest.mark.parametrize(
  'key,intermediate',
  [
    ('mlp', {'hidden.0', 'hidden.1'}),
    ('cnn', {'convs.0', 'convs.1', 'dense'}),
    ('resnet18', BLOCK_CONVS),
    ('vit', {f'blocks.{i}.attention.{n}' for i in range(2) for n in ('query', 'value')}),
  ],
)
def test_default_targets_are_the_intermediate_layers_and_the_head(key, intermediate):
  assert _selected(default_lora_settings(key).targets, key) == intermediate | {'head'}


@pytest.mark.parametrize('key,convs', [('resnet34', 2), ('resnet50', 3)])
def test_deeper_resnets_default_targets_are_every_block_conv_and_the_head(key, convs):
  model = nnx.eval_shape(
    lambda: create_model(key, num_classes=NUM_CLASSES, input_shape=CIFAR, rngs=nnx.Rngs(0), width=2)
  )
  targets = lora_targets(
    default_lora_settings(key).targets, model, model_name=key, config_key='method.rfa_lora.targets'
  )
  selected = {path for path in lora_layer_paths(model) if targets(tuple(path.split('.')), None)}
  # Blocks [3, 4, 6, 3]; BasicBlocks have conv1-2, Bottlenecks conv1-3; shortcuts stay frozen.
  blocks = [f'layer{s + 1}.{b}' for s, n in enumerate((3, 4, 6, 3)) for b in range(n)]
  assert selected == {f'{block}.conv{c}' for block in blocks for c in range(1, convs + 1)} | {
    'head'
  }


def test_default_settings_rank_and_alpha():
  for key in ('mlp', 'cnn', 'resnet18', 'vit', 'vit_tiny', 'vit_small'):
    settings = default_lora_settings(key)
    assert settings.rank == (8 if key == 'cnn' else 16)
    assert settings.alpha == settings.rank and isinstance(settings.alpha, float)
  with pytest.raises(ValueError, match="'lenet' is not a zoo model"):
    default_lora_settings('lenet')


def test_target_presets_and_fullmatch_regexes():
  blocks = range(2)
  assert _selected('attention', 'vit') == {
    f'blocks.{i}.attention.{n}' for i in blocks for n in ATTENTION
  }
  assert _selected('attention_mlp', 'vit') == _selected('attention', 'vit') | {
    f'blocks.{i}.{n}' for i in blocks for n in ('mlp_in', 'mlp_out')
  }
  assert _selected('all', 'vit') == set(lora_layer_paths(_model('vit')))
  assert 'patch_embed' in _selected('all', 'vit')
  # A regex must match the whole dotted path.
  assert _selected('dense', 'cnn') == {'dense'}
  assert _selected(r'convs\.1|head', 'cnn') == {'convs.1', 'head'}
  assert _selected(r'blocks\.1\..*', 'vit') == {f'blocks.1.attention.{n}' for n in ATTENTION} | {
    'blocks.1.mlp_in',
    'blocks.1.mlp_out',
  }
  assert set(TARGET_PRESETS) == {'all', 'attention_qv', 'attention', 'attention_mlp'}


def test_targets_that_select_nothing_or_do_not_parse_raise_one_line_errors():
  with pytest.raises(ValueError) as error:
    _selected('conv', 'cnn')
  assert str(error.value) == (
    "--config.method.rfa_lora.targets='conv': selects no layer of "
    'model cnn; layers are: convs.0, convs.1, dense, head.'
  )
  with pytest.raises(ValueError, match=r"targets='attention_qv': selects no layer of model cnn"):
    _selected('attention_qv', 'cnn')
  with pytest.raises(ValueError) as error:
    _selected('convs.(', 'cnn')
  assert str(error.value).startswith(
    "--config.method.rfa_lora.targets='convs.(': neither a "
    "preset ['all', 'attention', 'attention_mlp', 'attention_qv'] "
    'nor a valid regular expression ('
  )
  assert '\n' not in str(error.value)


@pytest.mark.parametrize(
  'kwargs,message',
  [
    (dict(rank=0, alpha=1.0), 'rank must be a positive int, got 0'),
    (dict(rank=2, alpha=0.0), 'alpha must be > 0, got 0.0'),
    (dict(rank=2, alpha=1.0, targets=lambda path, _: False), 'selected no'),
  ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    add_lora(_model('mlp'), rngs=nnx.Rngs(1), **kwargs)


def test_wrapping_twice_or_grouped_convs_raise():
  lora_model = add_lora(_model('mlp'), rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  with pytest.raises(ValueError, match=r'already has LoRA branches.*merge_lora'):
    add_lora(lora_model, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
  grouped = nnx.Conv(
    4, 4, (3, 3), feature_group_count=2, kernel_init=nnx.initializers.zeros, rngs=nnx.Rngs(0)
  )
  with pytest.raises(ValueError, match='feature_group_count=2'):
    add_lora(grouped, rank=RANK, alpha=ALPHA, rngs=nnx.Rngs(1))
