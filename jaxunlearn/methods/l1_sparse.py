"""l1-sparse (Jia et al., NeurIPS 2023): fine-tune on D_r with an l1 penalty on every weight.

The penalty weight decays linearly per epoch, ``alpha * (1 - epoch / epochs)``, as the reference
implementation does, so early epochs sparsify and late ones recover accuracy.
"""

import jax
import jax.numpy as jnp

from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import UnlearnContext, cross_entropy_loss, gradient_step
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


def build(ctx: UnlearnContext, cfg):
  steps_per_epoch = ctx.steps_per_epoch('retain')
  steps = cfg.epochs * steps_per_epoch
  tx = make_optimizer(cfg.optimizer, steps)
  remain_loss = cross_entropy_loss(ctx.model_fns, 'remain')
  alpha, epochs = float(cfg.alpha), int(cfg.epochs)

  def loss_fn(params, state, batch, key):
    loss, (batch_stats, metrics) = remain_loss(params, state, batch, key)
    epoch = state.step // steps_per_epoch
    current_alpha = alpha * (1.0 - epoch / epochs)
    l1 = sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(params))
    return loss + current_alpha * l1, (batch_stats, {**metrics, 'l1': l1})

  kind = StepKind(gradient_step(loss_fn, tx), {'remain': 'retain'})
  return Program({'remain': kind}, ['remain'] * steps, ctx.batch_size), create_state(
      ctx.original, {'main': tx})
