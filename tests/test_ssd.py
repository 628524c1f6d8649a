"""SSD: the dampening rule against a hand computation, untouched weights bit-identical, the
importance passes against direct sums, and a run through the main job's path."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import losses
from jaxunlearn.data import preprocess
from jaxunlearn.loop import run
from jaxunlearn.methods import registry, ssd
from jaxunlearn.unlearn import run_method
from tests.conftest import BATCH


def test_dampening_equals_a_hand_computation():
  params = {'w': jnp.array([1.0, -2.0, 3.0, 4.0, 5.0]), 'b': jnp.array([[0.5, -0.5]])}
  imp_all = {'w': jnp.array([1.0, 1.0, 0.1, 0.0, 2.0]), 'b': jnp.array([[1.0, 1e-3]])}
  imp_forget = {'w': jnp.array([20.0, 5.0, 100.0, 0.0, 21.0]), 'b': jnp.array([[10.0, 1.0]])}
  out = ssd.dampen(params, imp_all, imp_forget, dampening_constant=1.0, selection_weighting=10.0)
  # w: 20 > 10 -> x 1/20; 5 <= 10 stays; 100 > 1 -> x 0.1/100; 0 > 0 is false, stays; 21 > 20 -> x 2/21.
  np.testing.assert_allclose(out['w'], [1 / 20, -2.0, 3.0 * 0.001, 4.0, 5.0 * 2 / 21], rtol=1e-6)
  # b: 10 > 10 is false, stays; 1 > 0.01 -> x 1e-3.
  np.testing.assert_allclose(out['b'], [[0.5, -0.5e-3]], rtol=1e-6)
  # lambda scales the factor, which never exceeds 1.
  big = ssd.dampen(params, imp_all, imp_forget, dampening_constant=50.0, selection_weighting=10.0)
  np.testing.assert_allclose(big['w'], [1.0, -2.0, 3.0 * 0.05, 4.0, 5.0], rtol=1e-6)


def test_importances_are_squared_batch_gradients(tiny_context):
  ctx = tiny_context()
  fns, variables, data = ctx.model_fns, ctx.original, ctx.data
  imps = ssd.importances(ctx, ssd.SsdConfig(batch_size=BATCH))
  positions = data.sources['forget']
  images = preprocess(np.asarray(data.images)[positions], data.info, train=False, key=None)
  labels = np.asarray(data.labels)[positions]

  def loss(params, start):
    logits, _ = fns.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      images[start : start + BATCH],
      train=False,
    )
    return losses.cross_entropy(logits, labels[start : start + BATCH]).mean()

  starts = range(0, len(positions), BATCH)
  grads = [jax.grad(loss)(variables['params'], s) for s in starts]
  expected = jax.tree.map(lambda *g: sum(x**2 for x in g) / len(starts), *grads)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9), imps['forget'], expected
  )


def test_run_dampens_only_selected_weights(tiny_context):
  cfg = ssd.SsdConfig(batch_size=BATCH, selection_weighting=2.0, dampening_constant=1.0)
  ctx = tiny_context()
  variables = ctx.original
  plan = registry.get('ssd').build(ctx, cfg)
  state = run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=0,
    constants=plan.constants,
    log_every=1000,
  ).state
  after = jax.device_get(state.params)
  selected_total = 0
  for before, new, imp_d, imp_f in zip(
    *(
      jax.tree.leaves(t)
      for t in (variables['params'], after, plan.constants['all'], plan.constants['forget'])
    )
  ):
    selected = np.asarray(imp_f) > 2.0 * np.asarray(imp_d)
    np.testing.assert_array_equal(
      np.asarray(new)[~selected].view(np.uint32), np.asarray(before)[~selected].view(np.uint32)
    )
    factor = np.minimum(np.asarray(imp_d) / np.where(selected, imp_f, 1.0), 1.0)
    np.testing.assert_allclose(
      np.asarray(new)[selected], (np.asarray(before) * factor)[selected], rtol=1e-6
    )
    selected_total += selected.sum()
  assert selected_total > 0
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(state.batch_stats), variables['batch_stats']
  )


def test_ssd_runs_like_every_method(tiny_experiment, tiny_original):
  cfg = registry.get('ssd').config().replace(batch_size=BATCH)
  result = run_method(tiny_experiment, 'ssd', cfg, *tiny_original, seed=0)
  assert result.scores['steps'] == 1 and result.scores['RTE_s'] > 0
  assert 0 <= result.scores['UA'] <= 100
