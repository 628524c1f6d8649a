"""FT: fine-tune the original model on D_r (Golatkar et al. / Warnecke et al. baseline)."""

from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import UnlearnContext, cross_entropy_loss, gradient_step
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


def build(ctx: UnlearnContext, cfg):
  steps = cfg.epochs * ctx.steps_per_epoch('retain')
  tx = make_optimizer(cfg.optimizer, steps)
  kind = StepKind(gradient_step(cross_entropy_loss(ctx.model_fns, 'remain'), tx),
                  {'remain': 'retain'})
  return Program({'remain': kind}, ['remain'] * steps, ctx.batch_size), create_state(
      ctx.original, {'main': tx})
