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

Both elements of each pair are switches here. Presets: `official` (all official choices; also the
'cifar10_resnet18' preset), `paper` (all paper choices), `swin_tinyimagenet`, and the mnist5k
defaults (`SfronConfig()`). The ablation switches `saliency` (S), `adaptive_weights` (F) and `r_on`
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

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from jaxunlearn import losses
from jaxunlearn.config import Config, OptimizerConfig, choice, flag, integer, nested, number, sgd
from jaxunlearn.data import preprocess
from jaxunlearn.data.device import padded_chunks
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods import fisher
from jaxunlearn.methods.base import Plan, UnlearnContext
from jaxunlearn.methods.registry import register
from jaxunlearn.optim import make_optimizer, make_schedule, mask_updates
from jaxunlearn.sharding import DATA_AXIS
from jaxunlearn.state import ModelFns, TrainState

FADES = ('cosine', 'linear', 'constant')
NORMALISATIONS = ('batch', 'forget_set')
MASK_TARGETS = ('gradient', 'update')
INNER_LOOPS = ('auto', 'rolled', 'unrolled')
LOSS_EPS = 1e-15  # added to l^lambda, as in the official code
TORCH_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ adds it to the norm
ABLATION_ELEMENTS = ('saliency', 'adaptive_weights', 'r_on')


def _cosine_sgd() -> OptimizerConfig:
  return sgd(0.01, schedule='cosine')


@dataclasses.dataclass(frozen=True)
class SfronConfig(Config):
  """SFR-on's settings; the defaults are the paper's elements sized for mnist5k (`mnist5k`)."""

  iterations: int = integer(300, ge=1)
  batch_size: int = integer(128, ge=1)
  forget_every: int = integer(5, ge=1, doc='a forget update on every k-th iteration')
  remain_steps: int = integer(1, ge=0, doc='remain updates per iteration')
  optimizer: OptimizerConfig = nested(_cosine_sgd, doc='the remain (and shared) optimiser')
  forget_optimizer: OptimizerConfig = nested(_cosine_sgd, doc='the fast forget optimiser')
  shared_optimizer: bool = flag(False, doc='one optimiser state for forget and remain (code)')
  forget_scale: float = number(1e7, ge=0, doc='forget-loss scale at t = 0')
  forget_fade: str = choice('linear', FADES)
  forget_clip: float = number(
    7.0, ge=0, doc='PyTorch-formula clip of the forget gradient; 0 = none'
  )
  saliency: bool = flag(True, doc='S: the saliency mask')
  saliency_estimator: str = choice('empirical_fisher', fisher.ESTIMATORS)
  saliency_threshold: str = choice('ratio', fisher.THRESHOLDS)
  saliency_gamma: float = number(1.0, gt=0, doc="the 'ratio' threshold")
  saliency_fraction: float = number(0.5, ge=0, le=1, doc="the 'quantile' share kept")
  saliency_eps: float = number(1e-15, ge=0)
  saliency_batch_size: int = integer(128, ge=1)
  mask_on: str = choice('update', MASK_TARGETS)
  mask_cache: bool = flag(True, doc='cache the Fisher diagonals in the experiment directory')
  adaptive_weights: bool = flag(True, doc='F: per-sample forget weights')
  weight_lambda: float = number(0.5, ge=0)
  weight_normalisation: str = choice('forget_set', NORMALISATIONS)
  r_on: bool = flag(True, doc='R-on: the slow step')
  slow_rate: float = number(0.5, gt=0, le=1, doc='alpha; 1 = the slow step is an identity')
  inner_loop: str = choice('auto', INNER_LOOPS)

  def constraints(self):
    return (
      (
        'remain_steps',
        self.remain_steps > 0 or self.forget_every == 1,
        'must be >= 1 unless forget_every = 1 (an iteration must do something)',
      ),
    )


def official() -> SfronConfig:
  """The official code on CIFAR-10 / ResNet-18, 10% random forgetting, as it runs: gamma = 1
  ratio mask from mini-batch Fisher diagonals (batch 128), masked forget gradient clipped to norm
  7 then stepped by one SGD optimiser shared with the remain steps (lr 0.01, cosine over the
  iterations, momentum 0.9, wd 5e-4), weights normalised per batch with lambda = 0.5, forget scale
  25 with a cosine decay to 0, a forget batch every 5th iteration, 1500 iterations of batch 128,
  slow coefficient 1 (an identity)."""
  return SfronConfig(
    iterations=1500,
    forget_every=5,
    shared_optimizer=True,
    forget_scale=25.0,
    forget_fade='cosine',
    saliency_estimator='batch_fisher',
    mask_on='gradient',
    weight_normalisation='batch',
    slow_rate=1.0,
  )


def paper() -> SfronConfig:
  """The official budget with the three elements as the paper writes them: empirical Fisher, mask
  on the final forget update, separate fast forget and remain optimiser states (both SGD as
  `official`), weights normalised over D_f (N_f factor) with the linear (1 - t/T) fade, a forget
  batch every iteration, and a slow step with alpha = 0.5. The paper gives no value for alpha (the
  code's 1 makes the slow step an identity); 0.5 is our choice (Lookahead's usual value). Nor does
  it give a forget step size beyond the fast learning rate: the forget scale and clip stay the
  code's."""
  return official().replace(
    forget_every=1,
    shared_optimizer=False,
    forget_fade='linear',
    saliency_estimator='empirical_fisher',
    mask_on='update',
    weight_normalisation='forget_set',
    slow_rate=0.5,
  )


def swin_tinyimagenet() -> SfronConfig:
  """The official code's commented Swin-T / TinyImageNet 10% values: AdamW lr 2e-5, wd 0.05, 500
  iterations, a forget batch every iteration, forget scale 500, lambda 0.6 (other settings as
  `official`)."""
  adamw = OptimizerConfig(name='adamw', lr=2e-5, schedule='cosine', momentum=0.9, weight_decay=0.05)
  return official().replace(
    optimizer=adamw,
    forget_optimizer=adamw,
    iterations=500,
    forget_every=1,
    forget_scale=500.0,
    weight_lambda=0.6,
  )


def mnist5k() -> SfronConfig:
  """The paper's elements sized for the small CNN on mnist5k (2 CPU cores): 300 iterations, a
  forget batch every 5th, and forget scale 1e7. Why so large: the original model fits D_f to
  float32 precision, and l^-lambda hands the examples with (near) zero loss almost all the weight
  while their gradients vanish, so the weighted forget gradient at theta_0 is tiny. The clip
  (norm 7) then sets the forget step; the scale only has to lift the gradient above it, and the
  fade still ends the forgetting (experiments/results/FINDINGS.md, "Why the defaults are what
  they are")."""
  return paper().replace(iterations=300, forget_every=5, forget_scale=1e7)


def ablation_configs(cfg: SfronConfig) -> dict[str, SfronConfig]:
  """The 2^3 ablation grid of S, F and R-on around `cfg`: name -> config, e.g. 'sfron-SFR' (all
  on, `cfg` itself), 'sfron-SR' (uniform weights), 'sfron-none' (all off: alternating plain
  gradient ascent on D_f and descent on D_r)."""
  grid = {}
  for bits in range(7, -1, -1):
    flags = [bool(bits & (4 >> i)) for i in range(3)]
    name = ''.join(letter for letter, on in zip('SFR', flags) if on) or 'none'
    grid[f'sfron-{name}'] = cfg.replace(**dict(zip(ABLATION_ELEMENTS, flags)))
  return grid


def variants(cfg: SfronConfig) -> dict[str, SfronConfig]:
  """Where SFR-on's gap to Retrain comes from, one change at a time around `cfg`: the official
  code's mini-batch Fisher instead of the per-example one; a top-50% quantile mask instead of the
  ratio >= 1 threshold (which also keeps every weight with zero gradient on both sets, as
  (0 + eps) / (0 + eps) = 1); a forget batch every iteration as the paper's algorithm; two remain
  steps per iteration, or twice the iterations (more remain descent, for the utility that the
  forget steps cost); and the official code's whole formulation (`official`) at `cfg`'s size."""
  out = {
    'sfron-batch_fisher': cfg.replace(saliency_estimator='batch_fisher'),
    'sfron-quantile50': cfg.replace(saliency_threshold='quantile', saliency_fraction=0.5),
    'sfron-forget_every1': cfg.replace(forget_every=1),
    'sfron-remain2': cfg.replace(remain_steps=2),
    'sfron-iter600': cfg.replace(iterations=2 * cfg.iterations),
  }
  out['sfron-official'] = official().replace(
    iterations=cfg.iterations,
    forget_every=cfg.forget_every,
    forget_scale=cfg.forget_scale,
    mask_cache=cfg.mask_cache,
  )
  return out


# --- The pure pieces ----------------------------------------------------------------------------


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
  return weight / (loss**lam + LOSS_EPS)


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
  norm = optax.tree.norm(grads)
  coef = jnp.minimum(jnp.float32(max_norm) / (norm + TORCH_CLIP_EPS), 1.0)
  return jax.tree.map(lambda g: g * coef.astype(g.dtype), grads), norm


def slow_step(slow_params, fast_params, rate: float):
  """R-on's outer update ``theta_t - alpha (theta_t - theta_r)``, written as
  ``theta_r + (1 - alpha)(theta_t - theta_r)`` so that alpha = 1 returns theta_r bit for bit."""
  keep = jnp.float32(1.0 - float(rate))
  return jax.tree.map(
    lambda slow, fast: fast + (keep * (slow - fast)).astype(fast.dtype), slow_params, fast_params
  )


def schedule_kinds(iterations: int, forget_every: int, remain_steps: int) -> list[str]:
  """The step kind of every iteration: a forget update on iterations 0, f, 2f, ... ."""
  with_forget = 'forget' if remain_steps == 0 else 'forget_remain'
  return [with_forget if t % forget_every == 0 else 'remain' for t in range(iterations)]


def remain_slots(remain_steps: int) -> tuple[str, ...]:
  return ('remain',) if remain_steps == 1 else tuple(f'remain{k}' for k in range(remain_steps))


def use_unrolled_loops(setting: str) -> bool:
  """Whether the loops inside an iteration (the remain steps, the D_f loss pass) are unrolled.

  'auto' unrolls on CPU only: XLA:CPU runs a convolution's gradient inside a rolled `lax.scan`
  many times slower than the same steps unrolled, while on a GPU the two run alike and the rolled
  loop compiles in a time that does not grow with the step count (docs/speed.md, "Loop forms").
  A single remain step is called directly (a length-1 scan is still a rolled loop).
  """
  if setting not in INNER_LOOPS:
    raise ValueError(f'inner_loop={setting!r}: allowed values are {INNER_LOOPS}.')
  if setting == 'auto':
    return jax.default_backend() == 'cpu'
  return setting == 'unrolled'


def unit_lr(opt_cfg: OptimizerConfig) -> optax.GradientTransformation:
  """The optimiser of `opt_cfg` with learning rate 1: its update is minus the step direction,
  which the step scales by the learning rate of the current iteration t (the fast optimisers
  follow the iteration index, not their own update counts)."""
  return make_optimizer(opt_cfg.replace(lr=1.0, schedule='constant'), 1)


@dataclasses.dataclass(frozen=True, eq=False)
class SfronRun:
  """What one SFR-on run fixes, derived once by `build` and read by every piece of the step."""

  cfg: SfronConfig
  model_fns: ModelFns
  info: Any  # the dataset's DatasetInfo (for preprocessing the D_f pass)
  num_forget: int
  num_all: int
  unrolled: bool  # the loops inside an iteration (`use_unrolled_loops`)
  txs: dict  # optimiser name -> unit-rate optax transformation
  forget_opt: str  # the optimiser of the forget update ('forget' or the shared 'main')
  remain_opt: str
  forget_lr: optax.Schedule
  remain_lr: optax.Schedule
  batch_sharding: Any
  masked: bool  # a saliency mask is in the constants

  @property
  def over_forget_set(self) -> bool:
    return self.cfg.adaptive_weights and self.cfg.weight_normalisation == 'forget_set'

  @property
  def slots(self) -> tuple[str, ...]:
    return remain_slots(self.cfg.remain_steps) if self.cfg.remain_steps else ()


def _unit_updates(s: SfronRun, params, opt_states: dict, name: str, grads):
  updates, new_opt = s.txs[name].update(grads, opt_states[name], params)
  return updates, {**opt_states, name: new_opt}


def forget_set_inverse_losses(s: SfronRun, params, batch_stats, forget_set: dict):
  """c_j for every position of D_f at `params`, scattered over all training positions, and their
  sum (the 'forget_set' normaliser). `forget_set` holds D_f in chunks (`forget_set_arrays`)."""
  lam = float(s.cfg.weight_lambda)

  def chunk(xs):
    images = jax.lax.with_sharding_constraint(xs['images'], s.batch_sharding)
    logits, _ = s.model_fns.apply(
      {'params': params, 'batch_stats': batch_stats},
      preprocess(images, s.info, train=False, key=None),
      train=False,
    )
    return inverse_loss(losses.cross_entropy(logits, xs['labels']), xs['weight'], lam)

  chunks = {k: forget_set[k] for k in ('images', 'labels', 'weight')}
  if s.unrolled:
    c = jnp.stack(
      [
        chunk(jax.tree.map(lambda x, i=i: x[i], chunks))
        for i in range(forget_set['images'].shape[0])
      ]
    )
  else:
    c = jax.lax.map(chunk, chunks)
  scattered = (
    jnp.zeros((s.num_all,), jnp.float32).at[forget_set['positions'].ravel()].add(c.ravel())
  )
  return scattered, jnp.sum(c)


def forget_update(
  s: SfronRun, params, batch_stats, opt_states: dict, constants: dict, data: dict, t
):
  """(F, S) The fast forget update of iteration `t` on the D_f batch `data`: ascent on
  ``s(t) mean_i eps_i l_i``, the gradient masked (and clipped), the update masked too where
  ``mask_on='update'``. Returns (params, batch_stats, opt_states, metrics)."""
  cfg = s.cfg
  lam = float(cfg.weight_lambda)
  scale = jnp.float32(cfg.forget_scale) * fade(t, cfg.iterations, cfg.forget_fade)
  weight = data['weight']
  if s.over_forget_set:
    c_all, total = forget_set_inverse_losses(s, params, batch_stats, constants['forget_set'])
    eps = jnp.take(c_all, data['position']) * weight * (s.num_forget / total)

  def loss_fn(p):
    logits, new_stats = s.model_fns.apply(
      {'params': p, 'batch_stats': batch_stats}, data['image'], train=True
    )
    ce = losses.cross_entropy(logits, data['label'])
    if s.over_forget_set:
      w = eps
    elif cfg.adaptive_weights:
      w = sample_weights(ce, weight, lam)
    else:
      w = jnp.ones_like(ce)
    weighted = losses.weighted_mean(w * ce, weight)
    return -scale * weighted, (new_stats, logits, ce, weighted)

  grads, (new_stats, logits, ce, weighted) = jax.grad(loss_fn, has_aux=True)(params)
  if s.masked:
    grads = jax.tree.map(jnp.multiply, grads, constants['mask'])
  # The norm of the scaled, masked forget gradient, before clipping (a metric).
  grad_norm = optax.tree.norm(grads)
  if cfg.forget_clip:
    grads, _ = torch_clip_by_global_norm(grads, float(cfg.forget_clip))
  updates, opt_states = _unit_updates(s, params, opt_states, s.forget_opt, grads)
  if s.masked and cfg.mask_on == 'update':
    updates = mask_updates(updates, constants['mask'])
  lr = s.forget_lr(t)
  params = jax.tree.map(lambda p, u: p + (lr * u).astype(p.dtype), params, updates)
  metrics = {
    'forget_ce': losses.weighted_mean(ce, weight),
    'forget_weighted_ce': weighted,
    'forget_accuracy': losses.weighted_accuracy(logits, data['label'], weight),
    'forget_grad_norm': grad_norm,
    'forget_scale': scale,
  }
  return params, new_stats, opt_states, metrics


def remain_update(s: SfronRun, carry: tuple, data: dict, t):
  """(R) One fast remain update (plain CE descent on a D_r batch; every weight moves).
  `carry` is (params, batch_stats, opt_states); returns the new carry and metrics."""
  params, batch_stats, opt_states = carry

  def loss_fn(p):
    logits, new_stats = s.model_fns.apply(
      {'params': p, 'batch_stats': batch_stats}, data['image'], train=True
    )
    ce = losses.weighted_cross_entropy(logits, data['label'], data['weight'])
    return ce, (new_stats, logits, ce)

  grads, (new_stats, logits, ce) = jax.grad(loss_fn, has_aux=True)(params)
  updates, opt_states = _unit_updates(s, params, opt_states, s.remain_opt, grads)
  lr = s.remain_lr(t)
  params = jax.tree.map(lambda p, u: p + (lr * u).astype(p.dtype), params, updates)
  return (params, new_stats, opt_states), {
    'remain_ce': ce,
    'remain_accuracy': losses.weighted_accuracy(logits, data['label'], data['weight']),
  }


def remain_updates(s: SfronRun, carry: tuple, batch: dict, t):
  """The `remain_steps` remain updates of one iteration, unrolled or in a `lax.scan`; returns the
  carry and the metrics averaged over the steps."""
  if s.unrolled or len(s.slots) == 1:
    per_step = []
    for slot in s.slots:
      carry, slot_metrics = remain_update(s, carry, batch[slot], t)
      per_step.append(slot_metrics)
    stacked_metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)
  else:
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[batch[slot] for slot in s.slots])
    carry, stacked_metrics = jax.lax.scan(
      lambda c, data: remain_update(s, c, data, t), carry, stacked
    )
  return carry, jax.tree.map(jnp.mean, stacked_metrics)


def iteration(
  s: SfronRun, state: TrainState, batch: dict, constants: dict, *, with_forget: bool
) -> tuple[TrainState, dict]:
  """One SFR-on iteration: the forget update (if `with_forget`), the remain updates from where it
  ended, then the slow step from the iteration's start (if R-on)."""
  t = state.step
  params, batch_stats, opt_states = state.params, state.batch_stats, state.opt_state
  metrics = {}
  if with_forget:
    params, batch_stats, opt_states, metrics = forget_update(
      s, params, batch_stats, opt_states, constants, batch['forget'], t
    )
  if s.slots:
    (params, batch_stats, opt_states), remain_metrics = remain_updates(
      s, (params, batch_stats, opt_states), batch, t
    )
    metrics.update(remain_metrics)
  if s.cfg.r_on:
    params = slow_step(state.params, params, s.cfg.slow_rate)
  metrics['lr'] = s.remain_lr(t)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_states), metrics


def make_run(ctx: UnlearnContext, cfg: SfronConfig) -> SfronRun:
  """The `SfronRun` of a run of `cfg` in `ctx`: optimisers (unit rate), schedules, loop form."""
  return run_without_data(
    cfg,
    ctx.model_fns,
    NamedSharding(ctx.mesh, PartitionSpec(DATA_AXIS)),
    info=ctx.data.info,
    num_forget=ctx.num_forget,
    num_all=len(ctx.data.sources['all']),
  )


def run_without_data(
  cfg: SfronConfig,
  model_fns: ModelFns,
  batch_sharding,
  *,
  info=None,
  num_forget: int = 0,
  num_all: int = 0,
) -> SfronRun:
  """The `SfronRun` of `cfg` for a model, without a dataset (what `make_run` derives from a
  context; `info`, `num_forget` and `num_all` matter only to the 'forget_set' normalisation).

  Args:
    cfg: the run's settings.
    model_fns: the model.
    batch_sharding: the sharding of a batch (data parallel over the mesh).
    info: the dataset's DatasetInfo (preprocessing of the D_f pass).
    num_forget: |D_f|.
    num_all: the number of training positions.

  Returns:
    SfronRun with unit-rate optimisers and the iteration-indexed learning-rate schedules.
  """
  remain_lr = make_schedule(cfg.optimizer, cfg.iterations)
  if cfg.shared_optimizer:
    txs, forget_opt, remain_opt = {'main': unit_lr(cfg.optimizer)}, 'main', 'main'
    forget_lr = remain_lr
  else:
    txs = {'forget': unit_lr(cfg.forget_optimizer), 'remain': unit_lr(cfg.optimizer)}
    forget_opt, remain_opt = 'forget', 'remain'
    forget_lr = make_schedule(cfg.forget_optimizer, cfg.iterations)
  return SfronRun(
    cfg=cfg,
    model_fns=model_fns,
    info=info,
    num_forget=num_forget,
    num_all=num_all,
    unrolled=use_unrolled_loops(cfg.inner_loop),
    txs=txs,
    forget_opt=forget_opt,
    remain_opt=remain_opt,
    forget_lr=forget_lr,
    remain_lr=remain_lr,
    batch_sharding=batch_sharding,
    masked=bool(cfg.saliency),
  )


def compute_mask(ctx: UnlearnContext, cfg: SfronConfig):
  """The saliency mask of `cfg` at the original weights (Fisher diagonals read from the context's
  cache directory when `cfg.mask_cache` and it holds them)."""
  cache_dir = ctx.cache_dir if cfg.mask_cache else ''
  diagonals = [
    fisher.fisher_diagonal(
      ctx, source, cfg.saliency_estimator, int(cfg.saliency_batch_size), cache_dir=cache_dir
    )
    for source in ('forget', 'retain')
  ]
  return fisher.saliency_mask(
    *diagonals,
    threshold=cfg.saliency_threshold,
    gamma=float(cfg.saliency_gamma),
    fraction=float(cfg.saliency_fraction),
    eps=float(cfg.saliency_eps),
  )


def forget_set_arrays(ctx: UnlearnContext) -> dict:
  """D_f's raw images, labels, 0/1 weights and positions in chunks of the batch size (the last one
  padded), for the per-step loss pass of the 'forget_set' normalisation (a run constant)."""
  positions, weight = padded_chunks(ctx.data.sources['forget'], ctx.batch_size)
  return {
    'images': jnp.take(ctx.data.images, positions.ravel(), axis=0).reshape(
      positions.shape + ctx.data.images.shape[1:]
    ),
    'labels': jnp.take(ctx.data.labels, positions.ravel(), axis=0).reshape(positions.shape),
    'weight': jnp.asarray(weight),
    'positions': jnp.asarray(positions),
  }


@register(
  'sfron',
  config=SfronConfig,
  title='SFR-on (Huang et al., NeurIPS 2024)',
  summary='saliency mask from the Fisher-diagonal ratio, adaptive per-sample forget '
  'weights, fast/slow (R-on) updates in one jitted step',
  presets={
    'cifar10_resnet18': official,
    'official': official,
    'paper': paper,
    'swin_tinyimagenet': swin_tinyimagenet,
  },
  groups={'sfron_ablation': ablation_configs, 'sfron_variants': variants},
  tune=('optimizer.lr', 'forget_optimizer.lr'),
)
def build(ctx: UnlearnContext, cfg: SfronConfig) -> Plan:
  """SFR-on as a `Plan` of `cfg.iterations` iterations.

  Step kinds: 'forget_remain' (forget update, `remain_steps` remain updates, slow step) on every
  `forget_every`-th iteration, 'remain' (remain updates, slow step) on the others; with
  ``remain_steps = 0``, 'forget' alone. The state's ``opt_state`` holds 'forget' and 'remain'
  (or the shared 'main'); the constants hold the mask ('mask') and, for the 'forget_set'
  normalisation, D_f on device ('forget_set'). The saliency mask is computed here, before the
  first step (or its Fisher diagonals read from the cache).
  """
  constants = {}
  if cfg.saliency:
    constants['mask'] = compute_mask(ctx, cfg)
    logging.info(
      'SFR-on saliency mask keeps %.2f%% of the weights',
      100 * fisher.mask_density(constants['mask']),
    )
  if cfg.adaptive_weights and cfg.weight_normalisation == 'forget_set':
    constants['forget_set'] = forget_set_arrays(ctx)
  s = make_run(ctx, cfg)

  def make_step(with_forget: bool):
    def step(state, batch, key, constants):
      del key
      return iteration(s, state, batch, constants, with_forget=with_forget)

    return step

  remain_sources = {slot: 'retain' for slot in s.slots}
  kinds = {'remain': StepKind(make_step(False), remain_sources)} if s.slots else {}
  kinds['forget_remain' if s.slots else 'forget'] = StepKind(
    make_step(True), {'forget': 'forget', **remain_sources}
  )
  program = Program(
    kinds, schedule_kinds(cfg.iterations, cfg.forget_every, cfg.remain_steps), ctx.batch_size
  )
  params = ctx.original['params']
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=ctx.original['batch_stats'],
    opt_state={name: tx.init(params) for name, tx in s.txs.items()},
  )
  return Plan(program, state, constants)
