"""Optimisers: schedules, coupled weight decay, final-update masks, partitions by variable type."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn.config import OptimizerConfig, sgd
from jaxunlearn.optim import make_optimizer, make_schedule, mask_updates


def test_sgd_matches_the_pytorch_recipe_by_hand():
  cfg = sgd(0.1, momentum=0.9, weight_decay=0.01)
  tx = make_optimizer(cfg, 10)
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.5, 0.5])}
  state = tx.init(params)
  buf = np.zeros(2)
  w = np.array([1.0, -2.0])
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    g = np.array([0.5, 0.5]) + 0.01 * w  # weight decay added to the gradient
    buf = 0.9 * buf + g  # momentum buffer (dampening 0)
    w = w - 0.1 * buf
    np.testing.assert_allclose(params['w'], w, rtol=1e-6)


def test_schedules():
  cfg = sgd(1.0, schedule='cosine')
  assert make_schedule(cfg, 100)(0) == pytest.approx(1.0)
  assert make_schedule(cfg, 100)(50) == pytest.approx(0.5)
  assert make_schedule(cfg, 100)(100) == pytest.approx(0.0)
  step = OptimizerConfig(lr=1.0, schedule='step', lr_decay_steps=(10, 20))
  assert [float(make_schedule(step, 30)(t)) for t in (9, 10, 25)] == pytest.approx([1.0, 0.1, 0.01])
  onecycle = make_schedule(sgd(1.0, schedule='onecycle'), 100)
  assert [float(onecycle(t)) for t in (0, 30)] == pytest.approx([1 / 25, 1.0])
  assert float(onecycle(99)) < 1e-3 and float(onecycle(15)) < float(onecycle(30))
  with pytest.raises(ValueError, match='optimizer.schedule'):
    make_schedule(OptimizerConfig(schedule='warp'), 10)
  with pytest.raises(ValueError, match='optimizer.name'):
    make_optimizer(OptimizerConfig(name='lion'), 10)


def test_masked_final_update_keeps_masked_weights_bit_identical():
  cfg = sgd(0.1, momentum=0.9, weight_decay=0.05)
  mask = {'w': jnp.array([1.0, 0.0, 1.0, 0.0])}
  tx = make_optimizer(cfg, 10)
  params = {'w': jnp.array([1.0, 2.0, 3.0, 4.0])}
  state = tx.init(params)
  for i in range(5):
    grads = {'w': jnp.full((4,), float(i + 1))}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, mask_updates(updates, mask))
  np.testing.assert_array_equal(params['w'][1::2], [2.0, 4.0])
  assert np.all(params['w'][0::2] != np.array([1.0, 3.0]))
