"""The JAX side of the PyTorch comparison (experiments/reference_jax.py) and its torch twin
(experiments/torch_reference.py, experiments/torch_steps.py) compute the same thing.

After copying a JAX model's weights into its torch twin, on a tiny batch: the same loss and the
same gradients (CNN, ResNet, ViT); the same BatchNorm running statistics up to torch's unbiased
variance; the same updates after SalUn steps and an SFR-on iteration (on the CNN: the step math
does not depend on the model, and a ResNet's compile costs seconds), with the masked weights of
SalUn unmoved on both sides. The step tests use a learning rate of 0.1 and weight decay 0.05, so
that the weight decay is a visible part of the update (at 5e-4 it would hide below the
tolerance; without it these tests fail). float32 on CPU; the two differ only in summation order,
so the tolerances are float32 rounding scaled up: losses 1e-5 relative; gradients and updates,
per array, 1e-4 of the array's largest magnitude (BatchNorm over a few examples amplifies
rounding; a layout error would be of order 1). No timing is asserted. The tests that need
PyTorch (the `bench` extra) skip without it.
"""

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import reference_benchmark, reference_jax
from experiments.configs import benchmark as benchmark_config
from jaxunlearn import losses
from jaxunlearn.config import ConfigError

needs_torch = pytest.mark.skipif(
  importlib.util.find_spec('torch') is None, reason='needs PyTorch (the bench extra)'
)
INPUT_SHAPE = (8, 8, 3)
BATCH = 4
TINY = {
  'cnn': dict(channels=(4, 8), dense_width=16),
  'resnet18': dict(width=2),
  'vit': dict(patch_size=4, width=8, depth=2, num_heads=2, mlp_dim=16),
}
TOLERANCE = 1e-4
STEP_HYPER = dict(lr=0.1, momentum=0.9, weight_decay=0.05)


@functools.cache
def _jax_steps(name, devices=None, **hyper):
  return reference_jax.JaxSteps(
    name, input_shape=INPUT_SHAPE, model_kwargs=TINY[name], devices=devices, **hyper
  )


def _torch_model(name):
  from experiments import torch_reference

  model = torch_reference.create_model(
    name, num_classes=reference_jax.NUM_CLASSES, input_shape=INPUT_SHAPE, **TINY[name]
  )
  torch_reference.load_jax_variables(model, _jax_steps(name).variables)
  return model.train()


def _batch(seed=0):
  return reference_jax.make_batch(np.random.default_rng(seed), BATCH, INPUT_SHAPE)


def test_cases_follow_the_reference_flags_and_bad_ones_name_the_flag():
  config = benchmark_config.get_config()
  config.reference_models, config.reference_kinds = 'cnn', 'salun,sgd'
  config.reference_repeats = 2
  (case,) = reference_benchmark.select_cases(reference_benchmark.PRESETS['cpu'], config, steps=3)
  assert (case.model, case.batch, case.kinds) == ('cnn', 128, ('sgd', 'salun'))
  assert (case.timed_steps, case.repeats) == (3, 2)
  for flag, value in (
    ('device_preset', 'tpu'),
    ('reference_models', 'cnn,resnet50'),
    ('reference_kinds', 'adam'),
  ):
    bad = benchmark_config.get_config()
    bad[flag] = value
    with pytest.raises(ConfigError, match=f'--config.{flag}'):
      reference_benchmark.check_config(bad)


def test_jax_side_data_parallel_steps_match_one_device():
  devices = jax.devices()[:2]
  if len(devices) < 2:
    pytest.skip('needs two JAX devices')
  inputs = reference_jax.kind_inputs('salun', np.random.default_rng(3), BATCH, INPUT_SHAPE)
  results = []
  for steps in (_jax_steps('cnn', devices=tuple(devices)), _jax_steps('cnn')):
    (device_batch,), constants = steps.prepare('salun', [inputs])
    state, loss = steps.steps['salun'](steps.init_state('salun'), device_batch, constants)
    assert device_batch['train']['image'].sharding.mesh.devices.size == len(steps.mesh.devices)
    results.append((float(loss), jax.device_get(state.params)))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _assert_close(actual, expected, err_msg='', floor=0.0):
  expected = np.asarray(expected)
  scale = max(np.max(np.abs(expected)), floor)
  np.testing.assert_allclose(
    np.asarray(actual), expected, rtol=0, atol=TOLERANCE * scale, err_msg=err_msg
  )


def _assert_trees_close(actual, expected):
  # An array whose exact value is 0 (the gradient of ViT's key bias, which softmax ignores) holds
  # rounding noise only: its scale is floored at 1e-2 of the largest in the tree.
  floor = 1e-2 * max(np.max(np.abs(np.asarray(b))) for b in jax.tree.leaves(expected))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    _assert_close(a, b, jax.tree_util.keystr(path), floor)


@needs_torch
@pytest.mark.parametrize('name', sorted(TINY))
def test_same_loss_and_gradients(name):
  import torch

  from experiments import torch_reference, torch_steps

  steps = _jax_steps(name)
  batch = _batch()

  @jax.jit
  def loss_and_grads(params, batch_stats, images, labels):

    def loss_fn(p):
      logits, stats = steps.forward(p, batch_stats, images)
      return jnp.mean(losses.cross_entropy(logits, labels)), stats

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, stats), grads = loss_and_grads(
    steps.variables['params'], steps.variables['batch_stats'], batch['image'], batch['label']
  )
  model = _torch_model(name)
  inputs = torch_steps.to_torch(batch, 'cpu')
  torch_loss = torch.nn.functional.cross_entropy(model(inputs['image']), inputs['label'])
  torch_loss.backward()
  np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-5)
  torch_grads = torch_reference.jax_tree(
    model, steps.variables['params'], {n: p.grad for n, p in model.named_parameters()}
  )
  _assert_trees_close(grads, torch_grads)
  if name == 'resnet18':
    # Running means agree; torch updates the running variance with the unbiased batch variance:
    # torch_var - 0.9 = (flax_var - 0.9) n / (n - 1), n values per channel (both start at 1).
    torch_stats = torch_reference.jax_tree(
      model, steps.variables['batch_stats'], dict(model.state_dict())
    )
    stem_n = BATCH * INPUT_SHAPE[0] * INPUT_SHAPE[1]
    _assert_close(stats['stem_bn']['mean'], torch_stats['stem_bn']['mean'])
    _assert_close(
      (stats['stem_bn']['var'] - 0.9) * stem_n / (stem_n - 1), torch_stats['stem_bn']['var'] - 0.9
    )


def _stepper_pair(name):
  import torch

  from experiments import torch_steps

  steps = _jax_steps(name, **STEP_HYPER)
  stepper = torch_steps.make_stepper(
    name,
    INPUT_SHAPE,
    steps.variables,
    steps.mask,
    torch.device('cpu'),
    model_kwargs=TINY[name],
    **STEP_HYPER,
  )
  return steps, stepper


def _assert_same_updates(steps, stepper, jax_params):
  """The two sides moved every weight by the same amount (and so to the same place)."""
  from experiments import torch_reference

  initial = steps.variables['params']
  torch_params = torch_reference.jax_tree(
    stepper.model, initial, dict(stepper.model.named_parameters())
  )
  minus_initial = lambda tree: jax.tree.map(lambda p, p0: np.asarray(p) - p0, tree, initial)
  _assert_trees_close(minus_initial(jax_params), minus_initial(torch_params))
  return torch_params


@needs_torch
def test_salun_step_same_updates_and_masked_weights_unmoved(name='cnn'):
  from experiments import torch_steps

  steps, stepper = _stepper_pair(name)
  batch = _batch(1)
  # Two steps: the second moves the momentum buffers, which the mask must still hold back.
  state = steps.init_state('salun')
  (device_batch,), constants = steps.prepare('salun', [batch])
  for _ in range(2):
    state, loss = steps.steps['salun'](state, device_batch, constants)
    torch_loss = stepper.salun_step(torch_steps.to_torch(batch, 'cpu'))
    np.testing.assert_allclose(float(loss), float(torch_loss), rtol=1e-5)
  torch_params = _assert_same_updates(steps, stepper, state.params)
  moved = False
  for new, old, mask, torch_new in zip(
    jax.tree.leaves(state.params),
    jax.tree.leaves(steps.variables['params']),
    jax.tree.leaves(steps.mask),
    jax.tree.leaves(torch_params),
  ):
    frozen = mask == 0
    np.testing.assert_array_equal(np.asarray(new)[frozen], old[frozen])
    np.testing.assert_array_equal(torch_new[frozen], old[frozen])
    moved = moved or bool(np.any(np.asarray(new)[~frozen] != old[~frozen]))
  assert moved


@needs_torch
def test_sfron_iteration_same_updates(name='cnn'):
  from experiments import torch_steps

  steps, stepper = _stepper_pair(name)
  inputs = reference_jax.kind_inputs('sfron', np.random.default_rng(2), BATCH, INPUT_SHAPE)
  (device_batch,), constants = steps.prepare('sfron', [inputs])
  state, (weighted, remain) = steps.steps['sfron'](
    steps.init_state('sfron'), device_batch, constants
  )
  torch_inputs = torch_steps.to_torch(inputs, 'cpu')
  torch_weighted, torch_remain = stepper.sfron_iteration(
    torch_inputs['forget'], torch_inputs['remain'], lr=STEP_HYPER['lr'], **reference_jax.SFRON
  )
  np.testing.assert_allclose(
    [float(weighted), float(remain)], [float(torch_weighted), float(torch_remain)], rtol=1e-5
  )
  _assert_same_updates(steps, stepper, state.params)
