"""FT: fine-tune the original model on D_r (Golatkar et al. / Warnecke et al. baseline)."""

import dataclasses

from jaxunlearn.config import EpochMethodConfig, OptimizerConfig, nested, sgd
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import Plan, UnlearnContext, cross_entropy_loss, gradient_step
from jaxunlearn.methods.registry import register
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(EpochMethodConfig):
  """`epochs` passes over D_r (mnist5k defaults)."""

  optimizer: OptimizerConfig = nested(lambda: sgd(0.02))


def cifar10_resnet18() -> FinetuneConfig:
  """The SFR-on official code's FT baseline: lr 0.01, 10 epochs, batch 128."""
  return FinetuneConfig(epochs=10, optimizer=sgd(0.01))


@register(
  'ft',
  config=FinetuneConfig,
  title='FT (fine-tune on D_r)',
  presets={'cifar10_resnet18': cifar10_resnet18},
)
def build(ctx: UnlearnContext, cfg: FinetuneConfig) -> Plan:
  steps = cfg.epochs * ctx.steps_per_epoch('retain')
  tx = make_optimizer(cfg.optimizer, steps)
  kind = StepKind(
    gradient_step(cross_entropy_loss(ctx.model_fns, 'remain'), tx), {'remain': 'retain'}
  )
  return Plan(
    Program({'remain': kind}, ['remain'] * steps, ctx.batch_size),
    create_state(ctx.original, {'main': tx}),
    {},
  )
