"""NegGrad+ (Kurmanji et al.): one objective ``beta * CE(D_r) - (1 - beta) * CE(D_f)`` on a remain
batch and a forget batch per step; the schedule runs `epochs` passes over D_r, cycling D_f."""

from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import UnlearnContext, cross_entropy_loss, gradient_step
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


def build(ctx: UnlearnContext, cfg):
  steps = cfg.epochs * ctx.steps_per_epoch('retain')
  tx = make_optimizer(cfg.optimizer, steps)
  remain_loss = cross_entropy_loss(ctx.model_fns, 'remain')
  forget_loss = cross_entropy_loss(ctx.model_fns, 'forget')
  beta = float(cfg.beta)

  def loss_fn(params, state, batch, key):
    r_loss, (batch_stats, r_metrics) = remain_loss(params, state, batch, key)
    # BatchNorm running statistics follow the remain data only.
    f_loss, (_, f_metrics) = forget_loss(params, state, batch, key)
    return beta * r_loss - (1.0 - beta) * f_loss, (batch_stats, {**r_metrics, **f_metrics})

  kind = StepKind(gradient_step(loss_fn, tx), {'remain': 'retain', 'forget': 'forget'})
  return Program({'neggrad': kind}, ['neggrad'] * steps, ctx.batch_size), create_state(
      ctx.original, {'main': tx})
