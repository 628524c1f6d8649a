"""GA: gradient ascent on the forget loss over D_f (Thudi et al.), with gradient-norm clipping
(``optimizer.grad_clip``) as in the reference code."""

from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import UnlearnContext, cross_entropy_loss, gradient_step
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


def build(ctx: UnlearnContext, cfg):
  steps = cfg.epochs * ctx.steps_per_epoch('forget')
  tx = make_optimizer(cfg.optimizer, steps)
  kind = StepKind(gradient_step(cross_entropy_loss(ctx.model_fns, 'forget', sign=-1.0), tx),
                  {'forget': 'forget'})
  return Program({'forget': kind}, ['forget'] * steps, ctx.batch_size), create_state(
      ctx.original, {'main': tx})
