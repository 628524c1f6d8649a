"""SFR-on (Huang et al., NeurIPS 2024): saliency forgetting in the remain-preserving manifold.

One iteration t of the T in the schedule (one jitted step; the loop draws its batches):

1. (F, S) fast forget update from theta_t: ascent on the per-sample weighted forget loss
   ``-s(t) * mean_i eps_i l_i`` of a D_f batch, restricted to the salient weights m;
2. (R) fast remain update(s): `remain_steps` descents on D_r batches, from where step 1 ended
   (every weight moves), giving theta_r;
3. (R-on) slow update: ``theta_{t+1} = theta_t - alpha (theta_t - theta_r)``.

Iterations other than every `forget_every`-th skip step 1 (the official code forgets on every 5th).

**S, saliency mask** (`jaxunlearn.methods.fisher`): ``m = 1[(F_f + eps) / (F_r + eps) >= gamma]``
from Fisher diagonals of the CE loss at theta_0, over every parameter (head and normalisation
included), computed once before the run (optionally cached on disk).

**F, per-sample weights**: ``eps_i = N c_i / sum_j c_j`` with ``c_i = 1 / (l_i^lambda + 1e-15)``
(losses detached; lower loss -> larger weight), and a fading forget-loss scale
``s(t) = forget_scale * fade(t / T)``.

**R-on**: the fast forget and remain updates, each with its own optax state (or one shared state,
as in the official code), nested inside the slow interpolation, all in one jitted function.

Where the paper and the official code differ (switch: paper / official):

* Fisher estimator, `saliency_estimator`: the paper writes the squared per-example gradient
  ('empirical_fisher'); the code squares mini-batch-mean gradients of 128 ('batch_fisher').
* Where the mask acts, `mask_on`: the paper's fast update ``theta - beta m (-grad L_f)`` moves no
  masked weight ('update': the final forget update, after momentum and weight decay, is masked;
  the gradient is masked too, so clipping sees only salient weights); the code masks the gradient,
  clips it and steps one SGD optimiser shared with the remain steps, so momentum and weight decay
  still move masked weights ('gradient').
* Optimiser states, `shared_optimizer`: the paper's fast forget and remain updates are separate
  (False: states 'forget' and 'remain'); the code uses one SGD optimiser for both (True: 'main').
* Weight normaliser, `weight_normalisation`: the paper normalises over all of D_f with the N_f
  factor ('forget_set'); the code normalises within each mini-batch ('batch', N = batch size).
  Our 'forget_set' reading: the losses l_j(theta_t) of every example of D_f come from a forward
  pass over D_f at the start of each forget update (eval-mode BatchNorm, no augmentation), and the
  weight of a batch example is read from that same pass, so the weights of D_f sum to N_f exactly.
* Fade, `forget_fade`: the paper multiplies eps by (1 - t/T) ('linear'); the code decays a
  forget-loss scale of 25 with a cosine ('cosine'). `forget_scale` is the scale at t = 0.
* Slow step, `r_on` / `slow_rate` (alpha): the paper's outer step; the code's coefficient is 1, an
  identity (theta_{t+1} = theta_r). The paper gives no value for alpha.
* Forget frequency, `forget_every`: the paper forgets every iteration; the code every 5th.
* Clipping, `forget_clip`: the code clips the masked forget gradient to global norm 7 with
  PyTorch's formula ``g * min(1, c / (||g|| + 1e-6))``; the paper does not mention clipping.

Both elements of each pair are switches here; `experiments/configs/sfron.py` holds an 'official'
preset (all official choices), a 'paper' preset (all paper choices), a Swin-T/TinyImageNet preset
and the mnist5k default. The ablation switches `saliency` (S), `adaptive_weights` (F) and `r_on`
(R-on) turn an element off: no mask / uniform weights (lambda = 0; the fade stays) / no slow step.

Other readings, shared by both presets: forget batches run in train mode and so update BatchNorm
running statistics (as the code's ``model.train()`` forward does); the slow step interpolates the
parameters only (the code's averaging touches ``parameters()``, not buffers), and it runs on every
iteration, forget or not (as the code's averaging does); the fast optimiser states persist across
iterations (neither the code nor the paper resets them); the learning rate and the fade follow the
iteration index t, not each optimiser's update count (the code steps its scheduler once per
iteration, so the forget and remain updates of one iteration share one learning rate).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxunlearn import losses
from jaxunlearn.data import preprocess
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods import fisher
from jaxunlearn.methods.base import UnlearnContext
from jaxunlearn.optim import make_optimizer, make_schedule, mask_final_update
from jaxunlearn.sharding import DATA_AXIS
from jaxunlearn.state import TrainState

FADES = ('cosine', 'linear', 'constant')
NORMALISATIONS = ('batch', 'forget_set')
MASK_TARGETS = ('gradient', 'update')
INNER_LOOPS = ('auto', 'rolled', 'unrolled')
LOSS_EPS = 1e-15          # added to l^lambda, as in the official code
TORCH_CLIP_EPS = 1e-6     # torch.nn.utils.clip_grad_norm_ adds it to the norm
ABLATION_ELEMENTS = ('saliency', 'adaptive_weights', 'r_on')


def fade(step, total_steps: int, schedule: str) -> jax.Array:
  """The forget-loss fade at iteration `step` of `total_steps`: 1 at t = 0, 0 at t = T.

  'linear': 1 - t/T (the paper's eps); 'cosine': (1 + cos(pi t/T)) / 2 (the official code's scale
  schedule); 'constant': 1.
  """
  if schedule not in FADES:
    raise ValueError(f'forget_fade={schedule!r}: allowed values are {FADES}.')
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.float32(total_steps), 0.0, 1.0)
  if schedule == 'linear':
    return 1.0 - frac
  if schedule == 'cosine':
    return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
  return jnp.ones_like(frac)


def inverse_loss(per_example_loss, weight, lam: float) -> jax.Array:
  """c_i = weight_i / (l_i^lambda + 1e-15) of detached losses (0 on padding rows). CE is >= 0; it
  is clipped at 0 so that a rounding error below 0 cannot make a fractional power NaN."""
  loss = jnp.maximum(jax.lax.stop_gradient(per_example_loss), 0.0)
  return weight / (loss ** lam + LOSS_EPS)


def sample_weights(per_example_loss, weight, lam: float, *, normaliser=None, count=None):
  """The per-sample forget weights eps_i (without the fade).

  ``normaliser=None``: eps_i = n c_i / sum_{j in batch} c_j with n the number of real rows (the
  official code; the weights of a batch sum to n). Otherwise eps_i = `count` c_i / `normaliser`,
  with `normaliser` = sum_j c_j over a whole set of `count` examples (the paper, over D_f).
  """
  c = inverse_loss(per_example_loss, weight, lam)
  if normaliser is None:
    return c * jnp.sum(weight) / jnp.sum(c)
  return c * count / normaliser


def torch_clip_by_global_norm(grads, max_norm: float):
  """``g * min(1, max_norm / (||g|| + 1e-6))``, the formula of torch.nn.utils.clip_grad_norm_
  (optax's clip_by_global_norm has no 1e-6 and leaves g untouched below the threshold)."""
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  coef = jnp.minimum(jnp.float32(max_norm) / (norm + TORCH_CLIP_EPS), 1.0)
  return jax.tree.map(lambda g: g * coef.astype(g.dtype), grads), norm


def schedule_kinds(iterations: int, forget_every: int, remain_steps: int) -> list[str]:
  """The step kind of every iteration: a forget update on iterations 0, f, 2f, ... ."""
  with_forget = 'forget' if remain_steps == 0 else 'forget_remain'
  return [with_forget if t % forget_every == 0 else 'remain' for t in range(iterations)]


def remain_slots(remain_steps: int) -> tuple[str, ...]:
  return ('remain',) if remain_steps == 1 else tuple(f'remain{k}' for k in range(remain_steps))


def use_unrolled_loops(setting: str) -> bool:
  """Whether the loops inside an iteration (the remain steps, the D_f loss pass) are unrolled.

  'auto' unrolls on CPU only. Measured on XLA CPU (jax 0.10.2, 2 busy cores, mnist5k CNN, batch
  128): 4 remain steps per iteration took about 170 ms per gradient step unrolled and 2.9 s rolled
  in a `lax.scan` (17x); 8 unrolled, about 190 ms; one forget and one remain step, about 190 ms per
  step. (`lax.scan(unroll=True)` of length 1 is still a rolled loop, unroll = length = 1, and was
  as slow: a single remain step is called directly.) The forward-only D_f loss pass (4 chunks) is
  about 15% slower rolled. Measured on one H100 (jax 0.11.2, same model and batch, 500 timed
  iterations, `experiments/benchmarks/h100_sfron_inner_loop.json`): rolled and unrolled iterations
  are within 15% of each other at 1, 4 and 8 remain steps (e.g. 8 steps: 2.1 ms rolled, 2.3 ms
  unrolled), while the unrolled compile time grows with the step count (4.1, 5.2, 7.8 s) and the
  rolled one stays at 3.3-3.4 s; so 'auto' keeps the rolled loop off CPU (TPU not measured).
  """
  if setting not in INNER_LOOPS:
    raise ValueError(f'inner_loop={setting!r}: allowed values are {INNER_LOOPS}.')
  if setting == 'auto':
    return jax.default_backend() == 'cpu'
  return setting == 'unrolled'


def _unit_lr(opt_cfg) -> optax.GradientTransformation:
  """The optimiser of `opt_cfg` with learning rate 1: its update is minus the step direction, which
  the step scales by the learning rate of the current iteration."""
  unit = opt_cfg.copy_and_resolve_references()
  with unit.unlocked():
    unit.lr = 1.0
    unit.schedule = 'constant'
  return make_optimizer(unit, 1)


def check_config(cfg) -> None:
  """Raises a ValueError naming the first invalid SFR-on setting."""

  def need(ok: bool, key: str, allowed: str):
    if not ok:
      raise ValueError(f'sfron.{key}={cfg.get(key)!r}: allowed values are {allowed}.')

  need(int(cfg.iterations) >= 1, 'iterations', 'integers >= 1')
  need(int(cfg.forget_every) >= 1, 'forget_every', 'integers >= 1')
  need(int(cfg.remain_steps) >= 0, 'remain_steps', 'integers >= 0')
  need(int(cfg.remain_steps) > 0 or int(cfg.forget_every) == 1, 'remain_steps',
       '>= 1 unless forget_every = 1 (an iteration must do something)')
  need(float(cfg.forget_scale) >= 0, 'forget_scale', 'numbers >= 0')
  need(cfg.forget_fade in FADES, 'forget_fade', str(FADES))
  need(float(cfg.forget_clip) >= 0, 'forget_clip', 'numbers >= 0 (0 = no clipping)')
  need(cfg.saliency_estimator in fisher.ESTIMATORS, 'saliency_estimator', str(fisher.ESTIMATORS))
  need(cfg.saliency_threshold in fisher.THRESHOLDS, 'saliency_threshold', str(fisher.THRESHOLDS))
  need(0.0 <= float(cfg.saliency_fraction) <= 1.0, 'saliency_fraction', 'numbers in [0, 1]')
  need(int(cfg.saliency_batch_size) >= 1, 'saliency_batch_size', 'integers >= 1')
  need(cfg.mask_on in MASK_TARGETS, 'mask_on', str(MASK_TARGETS))
  need(float(cfg.weight_lambda) >= 0, 'weight_lambda', 'numbers >= 0')
  need(cfg.weight_normalisation in NORMALISATIONS, 'weight_normalisation', str(NORMALISATIONS))
  need(float(cfg.slow_rate) > 0, 'slow_rate', 'numbers > 0 (1 = the slow step is an identity)')
  need(cfg.inner_loop in INNER_LOOPS, 'inner_loop', str(INNER_LOOPS))


def compute_mask(ctx: UnlearnContext, cfg):
  """The saliency mask of `cfg` at the original weights (Fisher diagonals read from the cache when
  `cfg.mask_cache_dir` holds them)."""
  diagonals = [fisher.fisher_diagonal(ctx, source, cfg.saliency_estimator,
                                      int(cfg.saliency_batch_size), cache_dir=cfg.mask_cache_dir)
               for source in ('forget', 'retain')]
  return fisher.saliency_mask(*diagonals, threshold=cfg.saliency_threshold,
                              gamma=float(cfg.saliency_gamma),
                              fraction=float(cfg.saliency_fraction), eps=float(cfg.saliency_eps))


def forget_set_arrays(ctx: UnlearnContext) -> dict:
  """D_f's raw images, labels, 0/1 weights and positions in chunks of the batch size (the last one
  padded), for the per-step loss pass of the 'forget_set' normalisation. Method state: it lives in
  ``state.extra`` on device."""
  positions = np.asarray(ctx.data.sources['forget'], np.int32)
  chunks = math.ceil(len(positions) / ctx.batch_size)
  padded = np.concatenate([positions, np.full(chunks * ctx.batch_size - len(positions),
                                              positions[0], np.int32)])
  weight = (np.arange(len(padded)) < len(positions)).astype(np.float32)
  shape = (chunks, ctx.batch_size)
  return {'images': jnp.take(ctx.data.images, padded, axis=0).reshape(
              shape + ctx.data.images.shape[1:]),
          'labels': jnp.take(ctx.data.labels, padded, axis=0).reshape(shape),
          'weight': jnp.asarray(weight.reshape(shape)),
          'positions': jnp.asarray(padded.reshape(shape))}


def build(ctx: UnlearnContext, cfg):
  """SFR-on as a `Program` of `cfg.iterations` iterations and its initial state.

  Step kinds: 'forget_remain' (forget update, `remain_steps` remain updates, slow step) on every
  `forget_every`-th iteration, 'remain' (remain updates, slow step) on the others; with
  ``remain_steps = 0``, 'forget' alone. The state's ``opt_state`` holds 'forget' and 'remain'
  (or the shared 'main'), its ``extra`` the mask ('mask') and, for the 'forget_set'
  normalisation, D_f on device ('forget_set'). The saliency mask is computed here, before the
  first step (or its Fisher diagonals read from `cfg.mask_cache_dir`).
  """
  check_config(cfg)
  iterations, lam = int(cfg.iterations), float(cfg.weight_lambda)
  num_remain = int(cfg.remain_steps)
  slots = remain_slots(num_remain) if num_remain else ()
  unrolled = use_unrolled_loops(cfg.inner_loop)
  adaptive = bool(cfg.adaptive_weights)
  over_forget_set = adaptive and cfg.weight_normalisation == 'forget_set'
  shared = bool(cfg.shared_optimizer)
  fns = ctx.model_fns
  batch_sharding = NamedSharding(ctx.mesh, PartitionSpec(DATA_AXIS))
  num_forget, num_all = ctx.num_forget, len(ctx.data.sources['all'])

  extra, mask = {}, None
  if cfg.saliency:
    mask = compute_mask(ctx, cfg)
    logging.info('SFR-on saliency mask keeps %.2f%% of the weights',
                 100 * fisher.mask_density(mask))
    extra['mask'] = mask
  if over_forget_set:
    extra['forget_set'] = forget_set_arrays(ctx)

  remain_lr = make_schedule(cfg.optimizer, iterations)
  if shared:
    forget_opt = remain_opt = 'main'
    forget_lr = remain_lr
    txs = {'main': _unit_lr(cfg.optimizer)}
  else:
    forget_opt, remain_opt = 'forget', 'remain'
    forget_lr = make_schedule(cfg.forget_optimizer, iterations)
    forget_tx = _unit_lr(cfg.forget_optimizer)
    if mask is not None and cfg.mask_on == 'update':
      forget_tx = optax.chain(forget_tx, mask_final_update(mask))
    txs = {'forget': forget_tx, 'remain': _unit_lr(cfg.optimizer)}
  mask_update_by_hand = mask is not None and cfg.mask_on == 'update' and shared

  def unit_updates(params, opt_states, name, grads):
    updates, new_opt = txs[name].update(grads, opt_states[name], params)
    return updates, {**opt_states, name: new_opt}

  def forget_set_inverse_losses(params, batch_stats, arrays):
    """c_j for every position of D_f at `params` (scattered over all training positions) and
    their sum."""

    def chunk(xs):
      images, labels, weight = xs['images'], xs['labels'], xs['weight']
      images = jax.lax.with_sharding_constraint(images, batch_sharding)
      logits, _ = fns.apply({'params': params, 'batch_stats': batch_stats},
                            preprocess(images, ctx.data.info, train=False, key=None), train=False)
      return inverse_loss(losses.cross_entropy(logits, labels), weight, lam)

    chunks = {k: arrays[k] for k in ('images', 'labels', 'weight')}
    if unrolled:
      c = jnp.stack([chunk(jax.tree.map(lambda x, i=i: x[i], chunks))
                     for i in range(arrays['images'].shape[0])])
    else:
      c = jax.lax.map(chunk, chunks)
    scattered = jnp.zeros((num_all,), jnp.float32).at[arrays['positions'].ravel()].add(c.ravel())
    return scattered, jnp.sum(c)

  def forget_update(params, batch_stats, opt_states, extra, data, t):
    scale = jnp.float32(cfg.forget_scale) * fade(t, iterations, cfg.forget_fade)
    weight = data['weight']
    if over_forget_set:
      c_all, total = forget_set_inverse_losses(params, batch_stats, extra['forget_set'])
      eps = jnp.take(c_all, data['position']) * weight * (num_forget / total)

    def loss_fn(p):
      logits, new_stats = fns.apply({'params': p, 'batch_stats': batch_stats}, data['image'],
                                    train=True)
      ce = losses.cross_entropy(logits, data['label'])
      if over_forget_set:
        w = eps
      elif adaptive:
        w = sample_weights(ce, weight, lam)
      else:
        w = jnp.ones_like(ce)
      weighted = losses.weighted_mean(w * ce, weight)
      return -scale * weighted, (new_stats, logits, ce, weighted)

    grads, (new_stats, logits, ce, weighted) = jax.grad(loss_fn, has_aux=True)(params)
    if mask is not None:
      grads = jax.tree.map(jnp.multiply, grads, extra['mask'])
    # The norm of the scaled, masked forget gradient, before clipping (a metric).
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    if cfg.forget_clip:
      grads, _ = torch_clip_by_global_norm(grads, float(cfg.forget_clip))
    updates, opt_states = unit_updates(params, opt_states, forget_opt, grads)
    if mask_update_by_hand:
      updates = jax.tree.map(jnp.multiply, updates, extra['mask'])
    lr = forget_lr(t)
    params = jax.tree.map(lambda p, u: p + (lr * u).astype(p.dtype), params, updates)
    metrics = {'forget_ce': losses.weighted_mean(ce, weight),
               'forget_weighted_ce': weighted,
               'forget_accuracy': losses.weighted_accuracy(logits, data['label'], weight),
               'forget_grad_norm': grad_norm, 'forget_scale': scale}
    return params, new_stats, opt_states, metrics

  def remain_update(carry, data, t):
    params, batch_stats, opt_states = carry

    def loss_fn(p):
      logits, new_stats = fns.apply({'params': p, 'batch_stats': batch_stats}, data['image'],
                                    train=True)
      ce = losses.weighted_cross_entropy(logits, data['label'], data['weight'])
      return ce, (new_stats, logits, ce)

    grads, (new_stats, logits, ce) = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_states = unit_updates(params, opt_states, remain_opt, grads)
    lr = remain_lr(t)
    params = jax.tree.map(lambda p, u: p + (lr * u).astype(p.dtype), params, updates)
    return (params, new_stats, opt_states), {
        'remain_ce': ce,
        'remain_accuracy': losses.weighted_accuracy(logits, data['label'], data['weight'])}

  def make_step(with_forget: bool):

    def step(state: TrainState, batch: dict, key: jax.Array):
      del key
      t = state.step
      params, batch_stats, opt_states = state.params, state.batch_stats, state.opt_state
      metrics = {}
      if with_forget:
        params, batch_stats, opt_states, metrics = forget_update(
            params, batch_stats, opt_states, state.extra, batch['forget'], t)
      if slots:
        carry = (params, batch_stats, opt_states)
        if unrolled or len(slots) == 1:
          remain_metrics = []
          for slot in slots:
            carry, slot_metrics = remain_update(carry, batch[slot], t)
            remain_metrics.append(slot_metrics)
          remain_metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *remain_metrics)
        else:
          stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[batch[s] for s in slots])
          carry, remain_metrics = jax.lax.scan(lambda c, data: remain_update(c, data, t), carry,
                                               stacked)
        params, batch_stats, opt_states = carry
        metrics.update(jax.tree.map(jnp.mean, remain_metrics))
      if cfg.r_on:
        keep = jnp.float32(1.0 - float(cfg.slow_rate))
        # theta_r + (1 - alpha)(theta_t - theta_r) = theta_t - alpha (theta_t - theta_r); this form
        # returns theta_r bit for bit at alpha = 1.
        params = jax.tree.map(lambda slow, fast: fast + (keep * (slow - fast)).astype(fast.dtype),
                              state.params, params)
      metrics['lr'] = remain_lr(t)
      return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_states), metrics

    return step

  remain_sources = {slot: 'retain' for slot in slots}
  kinds = {'remain': StepKind(make_step(False), remain_sources)} if slots else {}
  kinds['forget_remain' if slots else 'forget'] = StepKind(
      make_step(True), {'forget': 'forget', **remain_sources})
  program = Program(kinds, schedule_kinds(iterations, int(cfg.forget_every), num_remain),
                    ctx.batch_size)
  params = ctx.original['params']
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=ctx.original['batch_stats'],
                     opt_state={name: tx.init(params) for name, tx in txs.items()}, extra=extra)
  return program, state


def ablation_configs(cfg) -> dict:
  """The 2^3 ablation grid of S, F and R-on around `cfg`: name -> config, e.g. 'sfron-SFR' (all
  on, `cfg` itself), 'sfron-SR' (uniform weights), 'sfron-none' (all off: alternating plain
  gradient ascent on D_f and descent on D_r)."""
  grid = {}
  for bits in range(7, -1, -1):
    flags = [bool(bits & (4 >> i)) for i in range(3)]
    name = ''.join(letter for letter, on in zip('SFR', flags) if on) or 'none'
    variant = cfg.copy_and_resolve_references()
    with variant.unlocked():
      for element, on in zip(ABLATION_ELEMENTS, flags):
        variant[element] = on
    grid[f'sfron-{name}'] = variant
  return grid
