"""Optimisers, learning-rate schedules, parameter partitions and update masks, all as optax.

Weight decay follows the PyTorch SGD convention the field's reference code uses (``wd * param`` is
added to the gradient before momentum) for 'sgd' and 'adam'; 'adamw' decouples it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step', 'linear')


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Learning rate per step from ``cfg.lr``, ``cfg.schedule`` and (for 'step') ``cfg.lr_decay_steps``
  and ``cfg.lr_decay_factor``; 'cosine' decays to 0 over `total_steps`, 'linear' likewise."""
  lr = float(cfg.lr)
  if cfg.schedule == 'constant':
    return optax.constant_schedule(lr)
  if cfg.schedule == 'cosine':
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  if cfg.schedule == 'linear':
    return optax.linear_schedule(lr, 0.0, max(total_steps, 1))
  if cfg.schedule == 'step':
    boundaries = {int(s): float(cfg.get('lr_decay_factor', 0.1)) for s in cfg.lr_decay_steps}
    return optax.piecewise_constant_schedule(lr, boundaries)
  raise ValueError(f'optimizer.schedule={cfg.schedule!r}: allowed values are {SCHEDULES}.')


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """Builds an optax optimiser from an optimizer config (name, lr, schedule, momentum,
  weight_decay, grad_clip). ``grad_clip`` > 0 clips the global gradient norm first."""
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f'optimizer.name={cfg.name!r}: allowed values are {OPTIMIZERS}.')
  schedule = make_schedule(cfg, total_steps)
  weight_decay = float(cfg.get('weight_decay', 0.0))
  parts = []
  if cfg.get('grad_clip', 0.0):
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip)))
  if cfg.name == 'adamw':
    parts.append(optax.adamw(schedule, weight_decay=weight_decay))
    return optax.chain(*parts)
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  if cfg.name == 'sgd':
    momentum = float(cfg.get('momentum', 0.0)) or None
    parts.append(optax.sgd(schedule, momentum=momentum, nesterov=bool(cfg.get('nesterov', False))))
  else:
    parts.append(optax.adam(schedule))
  return optax.chain(*parts)


class MaskState(NamedTuple):
  mask: Any


def mask_final_update(mask) -> optax.GradientTransformation:
  """Multiplies the final update by a fixed 0/1 mask PyTree (chain it last).

  Masking the gradient instead would let momentum and weight decay still move masked weights;
  masking the final update keeps them bit-identical. The mask lives in the optimiser state, so it is
  checkpointed with it.
  """

  def init(params):
    del params
    return MaskState(mask=mask)

  def update(updates, state, params=None):
    del params
    masked = jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, state.mask)
    return masked, state

  return optax.GradientTransformation(init, update)


def partition_by_type(tx: optax.GradientTransformation, param_types,
                      trainable: Callable[[type], bool]) -> optax.GradientTransformation:
  """Trains only the parameters whose variable type satisfies `trainable` (e.g. LoRA weights);
  the rest get zero updates and no optimiser state."""
  labels = jax.tree.map(lambda t: 'train' if trainable(t) else 'frozen', param_types)
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()}, labels)
