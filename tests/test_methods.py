"""Unlearning methods on the shared loop: masks, teachers, determinism, the original untouched."""

import jax
import numpy as np
import pytest

from jaxunlearn import report
from jaxunlearn.loop import run
from jaxunlearn.methods import registry, salun
from jaxunlearn.methods.base import gradient_statistic, top_fraction_mask
from jaxunlearn.unlearn import run_method, summarise
from tests.conftest import BATCH


def _method_cfg(name, **options):
  cfg = registry.get(name).config().replace(batch_size=BATCH, **options)
  if hasattr(cfg, 'epochs'):
    cfg = cfg.replace(epochs=1)
  return cfg


def _unlearn(tiny_context, name, seed=0, **options):
  ctx = tiny_context(seed=seed)
  plan = registry.get(name).build(ctx, _method_cfg(name, **options))
  return run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=seed,
    constants=plan.constants,
    log_every=1000,
  ).state


def test_top_fraction_mask_breaks_ties_by_position():
  scores = {'a': np.array([0.0, 0.0, 0.0, 0.0]), 'b': np.array([[3.0, 0.0], [1.0, 0.0]])}
  mask = top_fraction_mask(jax.tree.map(np.asarray, scores), 0.5)
  np.testing.assert_array_equal(mask['b'], [[1, 0], [1, 0]])
  np.testing.assert_array_equal(mask['a'], [1, 1, 0, 0])  # ties: first positions win


def test_salun_masked_weights_stay_bit_identical(tiny_context, tiny_original):
  _, variables = tiny_original
  mask = salun.saliency_mask(tiny_context(), 0.5)
  fraction = np.mean(np.concatenate([np.ravel(m) for m in jax.tree.leaves(mask)]))
  assert fraction == pytest.approx(0.5, abs=1e-3)
  # Momentum and weight decay on: without masking the final update they would move every weight.
  state = _unlearn(tiny_context, 'salun', optimizer=_method_cfg('salun').optimizer)
  assert (
    _method_cfg('salun').optimizer.momentum > 0 and _method_cfg('salun').optimizer.weight_decay > 0
  )
  moved = 0
  for m, before, after in zip(
    jax.tree.leaves(mask),
    jax.tree.leaves(variables['params']),
    jax.tree.leaves(jax.device_get(state.params)),
  ):
    m = np.asarray(m).astype(bool)
    np.testing.assert_array_equal(np.asarray(after)[~m], np.asarray(before)[~m])
    moved += np.sum(np.asarray(after)[m] != np.asarray(before)[m])
  assert moved > 0.9 * sum(np.sum(np.asarray(m)) for m in jax.tree.leaves(mask))


def test_mean_gradient_statistic_matches_direct_computation(tiny_experiment, tiny_original):
  fns, variables = tiny_original
  data = tiny_experiment.train
  stat = gradient_statistic(fns, variables, data, 'forget', BATCH, 'mean_gradient')
  from jaxunlearn import losses
  from jaxunlearn.data import preprocess

  positions = data.sources['forget']
  images = preprocess(np.asarray(data.images)[positions], data.info, train=False, key=None)
  labels = np.asarray(data.labels)[positions]
  batches = [slice(i, i + BATCH) for i in range(0, len(positions), BATCH)]

  def loss(params, bounds):
    sl = slice(*bounds)
    logits, _ = fns.apply(
      {'params': params, 'batch_stats': variables['batch_stats']}, images[sl], train=False
    )
    return losses.cross_entropy(logits, labels[sl]).mean()

  grads = [
    jax.jit(jax.grad(loss), static_argnums=1)(variables['params'], (sl.start, sl.stop))
    for sl in batches
  ]
  expected = jax.tree.map(lambda *g: sum(g) / len(batches), *grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), stat, expected)


def test_scrub_moves_the_student_not_the_teacher(tiny_context, tiny_original):
  _, variables = tiny_original
  ctx = tiny_context()
  plan = registry.get('scrub').build(ctx, _method_cfg('scrub'))
  state = run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=0,
    constants=plan.constants,
    log_every=1000,
  ).state
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(plan.constants['teacher']), variables)
  diffs = [
    np.abs(np.asarray(a) - np.asarray(b)).max()
    for a, b in zip(
      jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(variables['params'])
    )
  ]
  assert max(diffs) > 1e-4


@pytest.mark.parametrize('name', registry.names())
def test_every_method_is_deterministic_and_leaves_the_original_alone(
  tiny_context, tiny_original, name
):
  _, variables = tiny_original
  before = jax.tree.map(np.array, variables)
  first = jax.device_get(_unlearn(tiny_context, name, seed=1).params)
  second = jax.device_get(_unlearn(tiny_context, name, seed=1).params)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, variables))
  changed = any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(before['params']))
  )
  assert changed, f'{name} did not update any weight'


def test_random_labels_never_draw_the_true_label():
  from jaxunlearn.methods.base import random_other_labels

  labels = np.tile(np.arange(10), 500)
  drawn = np.asarray(random_other_labels(jax.random.key(0), labels, 10))
  assert np.all(drawn != labels)
  counts = np.bincount((drawn - labels) % 10, minlength=10)
  assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()


def test_a_diverged_run_is_reported_not_raised(tiny_experiment, tiny_original):
  cfg = _method_cfg('ga')
  cfg = cfg.replace(optimizer=cfg.optimizer.replace(lr=1e30, grad_clip=0.0))
  result = run_method(tiny_experiment, 'ga', cfg, *tiny_original, seed=0)
  assert result.scores['diverged'] == 1.0 and result.logits is None
  assert np.isnan(result.scores['UA']) and result.scores['RTE_s'] > 0
  good = {'UA': 10.0, 'diverged': 0.0}
  summary = summarise([result.scores, good])
  assert summary['UA'] == {'mean': 10.0, 'std': 0.0, 'n': 1}
  assert summary['diverged']['mean'] == 0.5
  table = report.study_table(
    {'ga': summary, 'all_bad': summarise([result.scores])}, class_wise=False
  )
  assert '| ga (diverged in 50% of seeds) | 10.00 |' in table
  assert '| all_bad (diverged in 100% of seeds) | diverged |' in table
