"""Optimisers, learning-rate schedules, parameter partitions and update masks, all as optax.

Weight decay follows the PyTorch SGD convention the field's reference code uses (``wd * param`` is
added to the gradient before momentum) for 'sgd' and 'adam'; 'adamw' decouples it.
"""

from __future__ import annotations

import jax
import optax

from jaxunlearn.config import OptimizerConfig


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """The learning rate per step.

  Args:
    cfg: the optimiser config ('cosine' and 'linear' decay to 0 over `total_steps`; 'step'
      multiplies by ``lr_decay_factor`` at each of ``lr_decay_steps``; 'onecycle' rises from
      lr / 25 to lr over the first 30% of the steps and falls to lr / 25e4 by cosine, the
      defaults of PyTorch's OneCycleLR).
    total_steps: the length of the run.

  Returns:
    An optax schedule.
  """
  lr = float(cfg.lr)
  if cfg.schedule == 'constant':
    return optax.constant_schedule(lr)
  if cfg.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  if cfg.schedule == 'linear':
    return optax.linear_schedule(lr, 0.0, max(total_steps, 1))
  if cfg.schedule == 'onecycle':
    return optax.cosine_onecycle_schedule(max(total_steps, 1), lr)
  if cfg.schedule == 'step':
    boundaries = {int(s): float(cfg.lr_decay_factor) for s in cfg.lr_decay_steps}
    return optax.piecewise_constant_schedule(lr, boundaries)
  raise ValueError(f'optimizer.schedule={cfg.schedule!r} is not a schedule.')


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
  """An optax optimiser; ``grad_clip`` > 0 clips the global gradient norm first.

  Args:
    cfg: name, lr, schedule, momentum, weight_decay, grad_clip, nesterov.
    total_steps: the length of the run (for decaying schedules).

  Returns:
    The optax transformation.
  """
  schedule = make_schedule(cfg, total_steps)
  parts = []
  if cfg.grad_clip:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
  if cfg.name == 'adamw':
    parts.append(optax.adamw(schedule, weight_decay=float(cfg.weight_decay)))
    return optax.chain(*parts)
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(float(cfg.weight_decay)))
  if cfg.name == 'sgd':
    parts.append(
      optax.sgd(schedule, momentum=float(cfg.momentum) or None, nesterov=bool(cfg.nesterov))
    )
  elif cfg.name == 'adam':
    parts.append(optax.adam(schedule))
  else:
    raise ValueError(f'optimizer.name={cfg.name!r} is not an optimiser.')
  return optax.chain(*parts)


def mask_updates(updates, mask):
  """The final updates times a fixed 0/1 mask PyTree.

  Masking the gradient instead would let momentum and weight decay still move masked weights;
  masking the final update (after every transformation) keeps them bit-identical. The mask is a
  run constant, passed to the step, never part of the optimiser state or a checkpoint.
  """
  return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, mask)
