"""BadTeacher (Chundawat et al., AAAI 2023): distil from the competent teacher (the original
model) on D_r and from an incompetent teacher (a randomly initialised model of the same
architecture) on D_f.

Each step draws a shuffled batch of D_f u D_r and minimises KL(teacher || student) at temperature
`temperature`, the teacher chosen per example. Reading: the reference trains on D_f plus a random
`retain_fraction` of D_r; here the pass covers all of D_r (`epochs` passes over the union), which
is the stronger retention setting and keeps the method deterministic given its seed.
"""

import jax
import jax.numpy as jnp

from jaxunlearn import losses
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import UnlearnContext, forward, gradient_step
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


def build(ctx: UnlearnContext, cfg):
  steps = cfg.epochs * ctx.steps_per_epoch('all')
  tx = make_optimizer(cfg.optimizer, steps)
  temperature = float(cfg.temperature)
  fns = ctx.model_fns

  def loss_fn(params, state, batch, key):
    del key
    data = batch['train']
    good, _ = fns.apply(state.extra['teacher'], data['image'], train=False)
    bad, _ = fns.apply(state.extra['bad_teacher'], data['image'], train=False)
    is_forget = jnp.take(state.extra['is_forget'], data['position'])[:, None]
    teacher = jax.lax.stop_gradient(jnp.where(is_forget > 0, bad, good))
    logits, batch_stats = forward(fns, params, state, data['image'])
    loss = losses.weighted_mean(losses.distillation_kl(teacher, logits, temperature),
                                data['weight'])
    return loss, (batch_stats, {})

  extra = {'teacher': ctx.original, 'bad_teacher': ctx.init_variables(ctx.seed + 1),
           'is_forget': ctx.is_forget()}
  kind = StepKind(gradient_step(loss_fn, tx), {'train': 'all'})
  return Program({'distill': kind}, ['distill'] * steps, ctx.batch_size), create_state(
      ctx.original, {'main': tx}, extra)
