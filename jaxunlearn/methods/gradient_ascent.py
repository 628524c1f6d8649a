"""GA: gradient ascent on the forget loss over D_f (Thudi et al.), with gradient-norm clipping
(``optimizer.grad_clip``) as in the reference code."""

import dataclasses

from jaxunlearn.config import EpochMethodConfig, OptimizerConfig, nested, sgd
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import Plan, UnlearnContext, cross_entropy_loss, gradient_step
from jaxunlearn.methods.registry import register
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


@dataclasses.dataclass(frozen=True)
class GradientAscentConfig(EpochMethodConfig):
  """`epochs` passes over D_f.

  The mnist5k default learning rate sits between leaving D_f recognised and collapsing the model
  (experiments/results/FINDINGS.md, "Why the defaults are what they are").
  """

  optimizer: OptimizerConfig = nested(lambda: sgd(0.0105, grad_clip=1.0))


def cifar10_resnet18() -> GradientAscentConfig:
  """The SFR-on official code's GA baseline: lr 1e-4, 9 epochs, clip 0.1."""
  return GradientAscentConfig(epochs=9, optimizer=sgd(1e-4, grad_clip=0.1))


@register(
  'ga',
  config=GradientAscentConfig,
  title='GA (gradient ascent on D_f)',
  summary='clipped',
  presets={'cifar10_resnet18': cifar10_resnet18},
)
def build(ctx: UnlearnContext, cfg: GradientAscentConfig) -> Plan:
  steps = cfg.epochs * ctx.steps_per_epoch('forget')
  tx = make_optimizer(cfg.optimizer, steps)
  kind = StepKind(
    gradient_step(cross_entropy_loss(ctx.model_fns, 'forget', sign=-1.0), tx), {'forget': 'forget'}
  )
  return Plan(
    Program({'forget': kind}, ['forget'] * steps, ctx.batch_size),
    create_state(ctx.original, {'main': tx}),
    {},
  )
