"""SFR-on: each pure piece on its own (mask, per-sample weights, the forget update, the remain
updates, the slow step), the official and paper schedules against hand-written re-statements,
compile-once, sharding and the Fisher cache."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxunlearn import sharding
from jaxunlearn.config import ConfigError, validate
from jaxunlearn.data import preprocess
from jaxunlearn.data.device import BatchSampler
from jaxunlearn.loop import run
from jaxunlearn.methods import fisher, sfron
from jaxunlearn.state import TrainState
from tests.conftest import BATCH


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('fisher_cache'))


def _cfg(preset='paper', **overrides):
  return getattr(sfron, preset)().replace(batch_size=BATCH, saliency_batch_size=BATCH, **overrides)


def _run(ctx, cfg, mesh=None):
  plan = sfron.build(ctx, cfg)
  result = run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=mesh or ctx.mesh,
    seed=0,
    constants=plan.constants,
    augment=False,
    log_every=1000,
  )
  return result, plan


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


# --- S: the saliency mask ------------------------------------------------------------------------


def _hand_fisher(ctx, source, estimator):
  """F by Python loops: over mini-batches (squared batch-mean gradient) or over examples."""
  fns, variables = ctx.model_fns, ctx.original
  positions = np.asarray(ctx.data.sources[source])
  images = np.asarray(
    preprocess(np.asarray(ctx.data.images)[positions], ctx.data.info, train=False, key=None)
  )
  labels = np.asarray(ctx.data.labels)[positions]

  @jax.jit
  def grad_of_mean_ce(params, x, y):
    def loss(p):
      logits, _ = fns.apply({'params': p, 'batch_stats': variables['batch_stats']}, x, train=False)
      return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    return jax.grad(loss)(params)

  total = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), variables['params'])
  if estimator == 'batch_fisher':
    starts = range(0, len(positions), BATCH)
    chunks = [slice(s, s + BATCH) for s in starts]
  else:
    chunks = [slice(i, i + 1) for i in range(len(positions))]
  for chunk in chunks:
    grads = grad_of_mean_ce(variables['params'], images[chunk], labels[chunk])
    total = jax.tree.map(lambda t, g: t + np.asarray(g, np.float64) ** 2, total, grads)
  return jax.tree.map(lambda t: (t / len(chunks)).astype(np.float32), total)


@pytest.mark.parametrize('estimator', ['batch_fisher', 'empirical_fisher'])
def test_mask_equals_direct_computation(tiny_context, cache_dir, estimator):
  ctx = tiny_context()
  mine = {
    s: fisher.fisher_diagonal(ctx, s, estimator, BATCH, cache_dir=cache_dir)
    for s in ('forget', 'retain')
  }
  hand = {s: _hand_fisher(ctx, s, estimator) for s in ('forget', 'retain')}
  for s in mine:
    for a, b in zip(_leaves(mine[s]), _leaves(hand[s])):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7 * b.max())
  ratio = [
    (f + np.float32(1e-15)) / (r + np.float32(1e-15))
    for f, r in zip(_leaves(hand['forget']), _leaves(hand['retain']))
  ]
  by_ratio = fisher.saliency_mask(mine['forget'], mine['retain'], threshold='ratio', gamma=1.0)
  for m, r in zip(_leaves(by_ratio), ratio):
    np.testing.assert_array_equal(m, (r >= 1.0).astype(np.float32))
  density = np.mean(np.concatenate([m.ravel() for m in _leaves(by_ratio)]))
  assert 0.02 < density < 0.98
  # Quantile: exactly the top 30% by saliency, pooled over the network.
  by_rank = fisher.saliency_mask(mine['forget'], mine['retain'], threshold='quantile', fraction=0.3)
  flat = np.concatenate([r.ravel() for r in ratio])
  expected = np.zeros(flat.size, np.float32)
  expected[np.argsort(-flat, kind='stable')[: round(0.3 * flat.size)]] = 1.0
  np.testing.assert_array_equal(np.concatenate([m.ravel() for m in _leaves(by_rank)]), expected)


def test_saliency_of_weights_without_gradient_is_one():
  zero = {'w': jnp.zeros((3,))}
  mask = fisher.saliency_mask(zero, {'w': jnp.array([0.0, 1e-3, 0.0])}, gamma=1.0)
  np.testing.assert_array_equal(mask['w'], [1.0, 0.0, 1.0])  # (0 + eps) / (0 + eps) = 1 >= 1


# --- Fisher cache --------------------------------------------------------------------------------


def test_fisher_cache_key_tracks_checkpoint_split_estimator(tiny_original):
  _, variables = tiny_original
  positions = np.arange(10, 40)
  key = fisher.fisher_cache_key(variables, positions, 'batch_fisher', 64, 'digits')
  assert key == fisher.fisher_cache_key(
    jax.tree.map(np.array, variables), positions.copy(), 'batch_fisher', 64, 'digits'
  )
  changed = jax.tree.map(np.array, variables)
  changed['params']['head']['bias'][0] += 1e-6
  assert fisher.fisher_cache_key(changed, positions, 'batch_fisher', 64, 'digits') != key
  other_split = positions.copy()
  other_split[-1] += 1
  assert fisher.fisher_cache_key(variables, other_split, 'batch_fisher', 64, 'digits') != key
  assert fisher.fisher_cache_key(variables, positions, 'empirical_fisher', 64, 'digits') != key
  assert fisher.fisher_cache_key(variables, positions, 'batch_fisher', 32, 'digits') != key


def test_fisher_cache_is_reused(tiny_context, cache_dir, monkeypatch):
  ctx = tiny_context()
  first = fisher.fisher_diagonal(ctx, 'forget', 'batch_fisher', BATCH, cache_dir=cache_dir)

  def no_recompute(*args, **kwargs):
    raise AssertionError('the cached Fisher diagonal was recomputed')

  monkeypatch.setattr(fisher, 'gradient_statistic', no_recompute)
  again = fisher.fisher_diagonal(ctx, 'forget', 'batch_fisher', BATCH, cache_dir=cache_dir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(first), jax.device_get(again))
  # A different checkpoint misses the cache (and would recompute).
  other = dataclasses.replace(ctx, original=jax.tree.map(lambda x: x * 1.5, ctx.original))
  with pytest.raises(AssertionError, match='recomputed'):
    fisher.fisher_diagonal(other, 'forget', 'batch_fisher', BATCH, cache_dir=cache_dir)


# --- F: per-sample weights and the fade ----------------------------------------------------------


def test_sample_weights_sum_order_and_padding():
  loss = jnp.array([0.25, 4.0, 1.0, 9.0])
  weight = jnp.array([1.0, 1.0, 1.0, 0.0])  # last row is padding
  eps = np.asarray(sfron.sample_weights(loss, weight, 0.5))
  c = np.array([2.0, 0.5, 1.0])  # l^-1/2 of the real rows
  np.testing.assert_allclose(eps, np.append(3 * c / c.sum(), 0.0), rtol=1e-6)
  assert eps.sum() == pytest.approx(3.0, rel=1e-6)  # n real rows
  assert eps[0] > eps[2] > eps[1]  # lower loss -> larger weight
  np.testing.assert_allclose(sfron.sample_weights(loss, weight, 0.0), [1, 1, 1, 0], rtol=1e-6)
  # Over a whole set: N_f c_i / sum_j c_j with the set's normaliser.
  np.testing.assert_allclose(
    sfron.sample_weights(loss, weight, 0.5, normaliser=5.0, count=10),
    np.append(10 * c / 5.0, 0.0),
    rtol=1e-6,
  )
  # A loss that underflowed to 0 gets 1 / 1e-15, never inf or NaN.
  zero = sfron.sample_weights(jnp.array([0.0, 1.0]), jnp.ones(2), 0.5)
  assert np.all(np.isfinite(zero)) and zero[0] > 1e5 * zero[1]


@pytest.mark.parametrize(
  'schedule,values',
  [
    ('linear', [1.0, 0.75, 0.5, 0.0]),
    ('cosine', [1.0, 0.5 + 0.5 * math.sqrt(0.5), 0.5, 0.0]),
    ('constant', [1.0, 1.0, 1.0, 1.0]),
  ],
)
def test_fade(schedule, values):
  got = [float(sfron.fade(t, 100, schedule)) for t in (0, 25, 50, 100)]
  np.testing.assert_allclose(got, values, rtol=1e-6, atol=1e-7)


def test_torch_clip_formula():
  grads = {'a': jnp.array([6.0, 8.0])}  # norm 10
  clipped, norm = sfron.torch_clip_by_global_norm(grads, 7.0)
  assert float(norm) == pytest.approx(10.0)
  np.testing.assert_allclose(clipped['a'], np.array([6.0, 8.0]) * 7.0 / (10.0 + 1e-6), rtol=1e-7)
  small, _ = sfron.torch_clip_by_global_norm(grads, 20.0)
  np.testing.assert_array_equal(small['a'], grads['a'])


# --- R-on: masked fast update, slow step ---------------------------------------------------------


def test_paper_forget_update_moves_no_masked_weight(tiny_context, cache_dir):
  ctx = tiny_context(cache_dir=cache_dir)
  cfg = _cfg('paper', remain_steps=0, forget_every=1, iterations=4, forget_scale=50.0)
  assert cfg.forget_optimizer.momentum > 0 and cfg.forget_optimizer.weight_decay > 0
  result, plan = _run(ctx, cfg)
  mask = _leaves(plan.constants['mask'])
  before, after = _leaves(ctx.original['params']), _leaves(result.state.params)
  kept = moved = 0
  for m, b, a in zip(mask, before, after):
    m = m.astype(bool)
    np.testing.assert_array_equal(a[~m].view(np.uint32), b[~m].view(np.uint32))
    kept += np.sum(~m)
    moved += np.sum(a[m] != b[m])
  assert kept > 0 and moved > 0.9 * sum(np.sum(m) for m in mask)
  # Masking only the gradient (the official placement) lets weight decay move masked weights.
  drifted, _ = _run(
    ctx,
    _cfg(
      'paper', remain_steps=0, forget_every=1, iterations=4, forget_scale=50.0, mask_on='gradient'
    ),
  )
  assert any(
    np.any(a[~m.astype(bool)] != b[~m.astype(bool)])
    for m, b, a in zip(mask, before, _leaves(drifted.state.params))
  )


def test_slow_step(tiny_context):
  ctx = tiny_context()
  base = dict(saliency=False, iterations=1, forget_every=1)
  fast, _ = _run(ctx, _cfg('paper', r_on=False, **base))
  identity, _ = _run(ctx, _cfg('paper', r_on=True, slow_rate=1.0, **base))
  half, _ = _run(ctx, _cfg('paper', r_on=True, slow_rate=0.5, **base))
  for theta0, theta_r, same, got in zip(
    _leaves(ctx.original['params']),
    _leaves(fast.state.params),
    _leaves(identity.state.params),
    _leaves(half.state.params),
  ):
    np.testing.assert_array_equal(same.view(np.uint32), theta_r.view(np.uint32))
    np.testing.assert_allclose(got, theta0 - 0.5 * (theta0 - theta_r), rtol=1e-6, atol=1e-7)
  assert any(np.any(a != b) for a, b in zip(_leaves(fast.state.params), _leaves(half.state.params)))


MU, WD, LAM = 0.9, 5e-4, 0.5  # both presets: SGD momentum, coupled weight decay; lambda


class _Hand:
  """Plain jax ops for the re-statements: per-example CE, PyTorch-style SGD, the loop's batches."""

  def __init__(self, ctx):
    self.ctx = ctx
    self.images, self.labels = jnp.asarray(ctx.data.images), jnp.asarray(ctx.data.labels)
    self.samplers = {
      s: BatchSampler(ctx.data.sources[s], BATCH, 0, s) for s in ('forget', 'retain')
    }
    self.draws = {'forget': 0, 'retain': 0}

  def batch(self, source):
    pos, w = self.samplers[source].batch(self.draws[source])
    self.draws[source] += 1
    return pos, w

  def per_example_ce(self, p, pos):
    x = preprocess(jnp.take(self.images, pos, axis=0), self.ctx.data.info, train=False, key=None)
    logits = self.ctx.model_fns.apply(
      {'params': p, 'batch_stats': self.ctx.original['batch_stats']}, x, train=True
    )[0]
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.take(self.labels, pos)[:, None], 1)[
      :, 0
    ]

  def remain_loss(self, p, pos, w):
    return jnp.sum(self.per_example_ce(p, pos) * w) / jnp.sum(w)

  @staticmethod
  def sgd_direction(params, buf, grads):
    """torch.optim.SGD's buffer: mu * buf + (g + wd * p) (buf = g + wd * p at the first step)."""
    return jax.tree.map(lambda b, g, p: MU * b + (g + WD * p), buf, grads, params)

  @staticmethod
  def torch_clip(grads, clip):
    norm = math.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads)))
    return jax.tree.map(lambda g: g * min(clip / (norm + 1e-6), 1.0), grads), norm > clip


def _assert_close(got_tree, want_tree, start_tree=None):
  """Equal up to float32 rounding; with `start_tree`, the re-statement moved from the start."""
  for got, want in zip(_leaves(got_tree), _leaves(want_tree)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  if start_tree is not None:
    assert (
      max(np.max(np.abs(w - s)) for w, s in zip(_leaves(want_tree), _leaves(start_tree))) > 1e-3
    )


def test_official_preset_matches_hand_written_schedule(tiny_context):
  """The official code re-stated: every 2nd iteration (here) a masked, clipped, batch-weighted
  ascent step, every iteration a remain step; one SGD (momentum, coupled weight decay) for both;
  learning rate and forget scale cosine over the iterations; no slow step."""
  ctx = tiny_context()
  # A clip norm of 1 (the code's is 7) so that this model's forget gradients get clipped.
  iterations, every, lr0, scale0, clip = 6, 2, 0.01, 25.0, 1.0
  result, plan = _run(
    ctx,
    _cfg(
      'official', iterations=iterations, forget_every=every, forget_clip=clip, forget_scale=scale0
    ),
  )
  mask, hand = plan.constants['mask'], _Hand(ctx)

  def forget_loss(p, pos, w, alpha):
    loss = hand.per_example_ce(p, pos)
    coef = w / (jax.lax.stop_gradient(loss) ** LAM + 1e-15)
    return -alpha * jnp.sum(coef / jnp.sum(coef) * loss)  # AdaptiveLoss: mean of B coef l / sum

  forget_grad, remain_grad = jax.jit(jax.grad(forget_loss)), jax.jit(jax.grad(hand.remain_loss))
  params = jax.tree.map(jnp.asarray, ctx.original['params'])
  buf = jax.tree.map(jnp.zeros_like, params)
  clipped = 0
  for t in range(iterations):
    cosine = 0.5 * (1 + math.cos(math.pi * t / iterations))
    lr = lr0 * cosine
    steps = []
    if t % every == 0:
      pos, w = hand.batch('forget')
      grads = jax.tree.map(jnp.multiply, forget_grad(params, pos, w, scale0 * cosine), mask)
      grads, was_clipped = hand.torch_clip(grads, clip)
      clipped += was_clipped
      steps.append(grads)
    for grads in steps + [None]:
      if grads is None:
        grads = remain_grad(params, *hand.batch('retain'))
      buf = hand.sgd_direction(params, buf, grads)
      params = jax.tree.map(lambda p, b, lr=lr: p - lr * b, params, buf)
  assert clipped > 0
  _assert_close(result.state.params, params, ctx.original['params'])
  _assert_close(optax.tree_utils.tree_get(result.state.opt_state['main'], 'trace'), buf)


def test_paper_preset_matches_hand_written_schedule(tiny_context, cache_dir):
  """The paper's iteration re-stated: weights eps_i = (1 - t/T) N_f c_i / sum_{D_f} c_j from the
  losses of all of D_f at theta_t, a masked forget step with its own SGD state (masked final
  update), a remain step with another, then theta_t - alpha (theta_t - theta_r)."""
  ctx = tiny_context(cache_dir=cache_dir)
  iterations, lr0, scale0, clip, alpha = 4, 0.01, 5.0, 1.0, 0.5
  result, plan = _run(
    ctx,
    _cfg('paper', iterations=iterations, forget_clip=clip, forget_scale=scale0, slow_rate=alpha),
  )
  mask, hand = plan.constants['mask'], _Hand(ctx)
  forget_positions = np.asarray(ctx.data.sources['forget'])
  index_in_forget = {int(p): i for i, p in enumerate(forget_positions)}

  def forget_loss(p, pos, w, eps, scale):
    return -scale * jnp.sum(eps * hand.per_example_ce(p, pos) * w) / jnp.sum(w)

  forget_grad, remain_grad = jax.jit(jax.grad(forget_loss)), jax.jit(jax.grad(hand.remain_loss))
  all_forget_ce = jax.jit(hand.per_example_ce)
  params = jax.tree.map(jnp.asarray, ctx.original['params'])
  buf_f = jax.tree.map(jnp.zeros_like, params)
  buf_r = jax.tree.map(jnp.zeros_like, params)
  for t in range(iterations):
    lr = lr0 * 0.5 * (1 + math.cos(math.pi * t / iterations))
    slow = params
    c = 1.0 / (np.asarray(all_forget_ce(params, forget_positions), np.float64) ** LAM + 1e-15)
    pos, w = hand.batch('forget')
    eps = np.array([len(c) * c[index_in_forget[int(q)]] / c.sum() for q in pos], np.float32)
    grads = jax.tree.map(
      jnp.multiply, forget_grad(params, pos, w, eps, scale0 * (1 - t / iterations)), mask
    )
    grads, _ = hand.torch_clip(grads, clip)
    buf_f = hand.sgd_direction(params, buf_f, grads)
    params = jax.tree.map(lambda p, b, m, lr=lr: p - lr * b * m, params, buf_f, mask)
    buf_r = hand.sgd_direction(params, buf_r, remain_grad(params, *hand.batch('retain')))
    params = jax.tree.map(lambda p, b, lr=lr: p - lr * b, params, buf_r)
    params = jax.tree.map(lambda s, r: s - alpha * (s - r), slow, params)
  _assert_close(result.state.params, params, ctx.original['params'])
  _assert_close(optax.tree_utils.tree_get(result.state.opt_state['forget'], 'trace'), buf_f)
  _assert_close(optax.tree_utils.tree_get(result.state.opt_state['remain'], 'trace'), buf_r)


# --- one program: compile once, sharding, loop structure -----------------------------------------


def test_schedule_and_ablation_grid():
  assert sfron.schedule_kinds(7, 5, 1) == ['forget_remain'] + ['remain'] * 4 + [
    'forget_remain',
    'remain',
  ]
  assert sfron.schedule_kinds(3, 1, 0) == ['forget'] * 3
  grid = sfron.ablation_configs(_cfg('paper'))
  assert list(grid) == [
    'sfron-SFR',
    'sfron-SF',
    'sfron-SR',
    'sfron-S',
    'sfron-FR',
    'sfron-F',
    'sfron-R',
    'sfron-none',
  ]
  assert [(c.saliency, c.adaptive_weights, c.r_on) for c in grid.values()] == [
    (s, f, r) for s in (True, False) for f in (True, False) for r in (True, False)
  ]
  with pytest.raises(ConfigError, match=r'--config.method.sfron.mask_on=.weights.: must be one'):
    validate(_cfg('paper', mask_on='weights'), '--config.method.sfron')
  with pytest.raises(ConfigError, match='remain_steps=0: must be >= 1 unless forget_every = 1'):
    validate(_cfg('paper', remain_steps=0, forget_every=5), '--config.method.sfron')


def test_compiles_once(tiny_context, cache_dir):
  """One executable per step kind: 3 iterations ('forget_remain', 'remain', 'forget_remain')
  compile 2 programs, not 3."""
  ctx = tiny_context(cache_dir=cache_dir)
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, fun_name=None, **kw: (
      compiles.append(fun_name) if name == '/jax/core/compile/backend_compile_duration' else None
    )
  )
  plan = sfron.build(ctx, _cfg('paper', iterations=3, forget_every=2))
  compiles.clear()
  run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=0,
    constants=plan.constants,
    augment=False,
    log_every=1000,
  )
  assert compiles.count('jit(program_step)') == 2


def test_sharded_equals_single_device_and_rolled_equals_unrolled(tiny_context, cache_dir):
  assert jax.device_count() == 8, 'run the tests with 8 forced host devices'
  cfg = _cfg('paper', iterations=4, forget_every=2, remain_steps=2)
  one_mesh = sharding.make_mesh(jax.devices()[:1])
  one, _ = _run(tiny_context(mesh=one_mesh, cache_dir=cache_dir), cfg, one_mesh)
  assert one.history[-1]['forget_ce'] > 0
  eight_mesh = sharding.make_mesh()
  for inner_loop in ('unrolled', 'rolled'):
    eight, _ = _run(
      tiny_context(mesh=eight_mesh, cache_dir=cache_dir),
      cfg.replace(inner_loop=inner_loop),
      eight_mesh,
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
      jax.device_get(one.state.params),
      jax.device_get(eight.state.params),
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
      jax.device_get(one.state.opt_state),
      jax.device_get(eight.state.opt_state),
    )


# --- the pieces, called alone --------------------------------------------------------------------


def _pieces(tiny_context, cache_dir, **overrides):
  """Settings, constants, a start state and one forget and one remain batch of a paper run."""
  ctx = tiny_context(cache_dir=cache_dir)
  cfg = _cfg('paper', iterations=10, **overrides)
  plan = sfron.build(ctx, cfg)
  s = sfron.make_run(ctx, cfg)
  hand = _Hand(ctx)
  batch = {}
  for slot, source in (('forget', 'forget'), ('remain', 'retain')):
    pos, w = hand.batch(source)
    x = preprocess(jnp.take(hand.images, pos, axis=0), ctx.data.info, train=False, key=None)
    batch[slot] = {
      'image': x,
      'label': jnp.take(hand.labels, pos),
      'weight': jnp.asarray(w),
      'position': jnp.asarray(pos),
    }
  return ctx, s, plan, batch


def test_slow_step_piece():
  slow = {'w': jnp.array([1.0, 2.0, -3.0])}
  fast = {'w': jnp.array([0.0, 4.0, -1.0])}
  np.testing.assert_allclose(sfron.slow_step(slow, fast, 0.25)['w'], [0.75, 2.5, -2.5])
  same = sfron.slow_step(slow, fast, 1.0)['w']
  np.testing.assert_array_equal(
    np.asarray(same).view(np.uint32), np.asarray(fast['w']).view(np.uint32)
  )


def test_remain_update_piece_is_one_sgd_step(tiny_context, cache_dir):
  ctx, s, plan, batch = _pieces(tiny_context, cache_dir)
  state = plan.state
  (params, _, opt), metrics = sfron.remain_update(
    s, (state.params, state.batch_stats, state.opt_state), batch['remain'], 3
  )
  hand = _Hand(ctx)
  grads = jax.grad(lambda p: losses_ce(ctx, p, batch['remain']))(state.params)
  lr = s.remain_lr(3)
  want = jax.tree.map(lambda p, g: p - lr * (g + WD * p), state.params, grads)  # first step: buf
  del hand
  _assert_close(params, want, state.params)
  assert float(metrics['remain_ce']) == pytest.approx(
    float(losses_ce(ctx, state.params, batch['remain'])), rel=1e-5
  )
  # Only the remain optimiser's state moved.
  jax.tree.map(np.testing.assert_array_equal, opt['forget'], state.opt_state['forget'])


def losses_ce(ctx, params, data):
  logits, _ = ctx.model_fns.apply(
    {'params': params, 'batch_stats': ctx.original['batch_stats']}, data['image'], train=True
  )
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), data['label'][:, None], 1)[:, 0]
  return jnp.sum(ce * data['weight']) / jnp.sum(data['weight'])


def test_forget_update_piece_masks_weights_and_follows_the_formula(tiny_context, cache_dir):
  ctx, s, plan, batch = _pieces(tiny_context, cache_dir, forget_scale=3.0, forget_clip=0.0)
  state, mask, t = plan.state, plan.constants['mask'], 2
  params, _, opt, metrics = sfron.forget_update(
    s, state.params, state.batch_stats, state.opt_state, plan.constants, batch['forget'], t
  )
  # eps over D_f at theta_t, by hand: N_f c_i / sum_j c_j, c = 1 / (l^0.5 + 1e-15).
  positions = np.asarray(ctx.data.sources['forget'])
  hand = _Hand(ctx)
  all_ce = np.asarray(hand.per_example_ce(state.params, positions), np.float64)
  c = 1.0 / (np.maximum(all_ce, 0) ** LAM + 1e-15)
  index = {int(p): i for i, p in enumerate(positions)}
  data = batch['forget']
  eps = np.array(
    [len(c) * c[index[int(q)]] / c.sum() for q in np.asarray(data['position'])], np.float32
  ) * np.asarray(data['weight'])
  scale = 3.0 * (1 - t / 10)

  def loss(p):
    logits, _ = ctx.model_fns.apply(
      {'params': p, 'batch_stats': state.batch_stats}, data['image'], train=True
    )
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), data['label'][:, None], 1)[:, 0]
    return -scale * jnp.sum(eps * ce * data['weight']) / jnp.sum(data['weight'])

  grads = jax.tree.map(jnp.multiply, jax.grad(loss)(state.params), mask)
  lr = s.forget_lr(t)
  want = jax.tree.map(lambda p, g, m: p - lr * m * (g + WD * p), state.params, grads, mask)
  _assert_close(params, want)
  for m, before, after in zip(_leaves(mask), _leaves(state.params), _leaves(params)):
    np.testing.assert_array_equal(after[m == 0], before[m == 0])
  assert float(metrics['forget_scale']) == pytest.approx(scale)
  jax.tree.map(np.testing.assert_array_equal, opt['remain'], state.opt_state['remain'])


def test_forget_set_losses_piece_equals_a_direct_pass(tiny_context, cache_dir):
  ctx, s, plan, _ = _pieces(tiny_context, cache_dir)
  scattered, total = sfron.forget_set_inverse_losses(
    s, plan.state.params, plan.state.batch_stats, plan.constants['forget_set']
  )
  positions = np.asarray(ctx.data.sources['forget'])
  logits, _ = ctx.model_fns.apply(
    ctx.original,
    preprocess(np.asarray(ctx.data.images)[positions], ctx.data.info, train=False, key=None),
    train=False,
  )
  ce = -np.take_along_axis(
    np.asarray(jax.nn.log_softmax(logits)), np.asarray(ctx.data.labels)[positions][:, None], 1
  )[:, 0]
  c = 1.0 / (np.maximum(ce, 0) ** LAM + 1e-15)
  np.testing.assert_allclose(np.asarray(scattered)[positions], c, rtol=1e-3)  # float32 losses
  assert np.count_nonzero(np.asarray(scattered)) == len(positions)
  assert float(total) == pytest.approx(c.sum(), rel=1e-3)


def test_remain_updates_rolled_equals_unrolled_piece(tiny_context, cache_dir):
  ctx, s, plan, batch = _pieces(tiny_context, cache_dir, remain_steps=2)
  two = {'remain0': batch['remain'], 'remain1': batch['forget']}
  carry = (plan.state.params, plan.state.batch_stats, plan.state.opt_state)
  out = {}
  for unrolled in (True, False):
    settings = dataclasses.replace(s, unrolled=unrolled)
    out[unrolled] = jax.jit(lambda c, b, st=settings: sfron.remain_updates(st, c, b, 1))(carry, two)
  _assert_close(out[True][0][0], out[False][0][0])
  assert float(out[True][1]['remain_ce']) == pytest.approx(
    float(out[False][1]['remain_ce']), rel=1e-5
  )


def test_iteration_piece_composes_the_pieces(tiny_context, cache_dir):
  ctx, s, plan, batch = _pieces(tiny_context, cache_dir)
  state = plan.state.replace(step=jnp.asarray(4, jnp.int32))
  new, _ = sfron.iteration(s, state, batch, plan.constants, with_forget=True)
  p, bs, opt, _ = sfron.forget_update(
    s, state.params, state.batch_stats, state.opt_state, plan.constants, batch['forget'], 4
  )
  (p, bs, opt), _ = sfron.remain_update(s, (p, bs, opt), batch['remain'], 4)
  want = sfron.slow_step(state.params, p, s.cfg.slow_rate)
  _assert_close(new.params, want)
  assert isinstance(new, TrainState)
