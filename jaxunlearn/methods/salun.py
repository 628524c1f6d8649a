"""SalUn (Fan et al., ICLR 2024): random-label unlearning restricted to salient weights.

The saliency mask keeps the top `mask_fraction` of all weights by |gradient of the forget loss| at
the original weights (the gradient of the mean CE over D_f, accumulated over its mini-batches as
the reference does, pooled over the whole network for one global threshold). The mask multiplies
the *final* update, after momentum and weight decay, so masked weights never move: masking only
the gradient lets momentum and weight decay move them (a bug users of the reference code hit).
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxunlearn.config import EpochMethodConfig, OptimizerConfig, integer, nested, number, sgd
from jaxunlearn.methods import random_label
from jaxunlearn.methods.base import Plan, UnlearnContext, gradient_statistic, top_fraction_mask
from jaxunlearn.methods.registry import register


@dataclasses.dataclass(frozen=True)
class SalunConfig(EpochMethodConfig):
  """RL's settings plus the share of weights that may move."""

  epochs: int = integer(3, ge=1)
  optimizer: OptimizerConfig = nested(lambda: sgd(0.01))
  mask_fraction: float = number(0.5, gt=0, le=1, doc='share of weights updated (the salient ones)')


def cifar10_resnet18() -> SalunConfig:
  """The SFR-on official code's SalUn baseline: lr 0.007, 10 epochs, a top-20% mask (the SalUn
  paper's own default is 50%)."""
  return SalunConfig(epochs=10, optimizer=sgd(0.007), mask_fraction=0.2)


def saliency_mask(ctx: UnlearnContext, fraction: float):
  """The top `fraction` of weights by |mean D_f gradient| at the original weights."""
  grads = gradient_statistic(
    ctx.model_fns, ctx.original, ctx.data, 'forget', ctx.batch_size, 'mean_gradient'
  )
  return top_fraction_mask(jax.tree.map(jnp.abs, grads), fraction)


@register(
  'salun',
  config=SalunConfig,
  title='SalUn (Fan et al., ICLR 2024)',
  summary='RL on the top-k% salient weights; the mask multiplies the final update, so '
  'masked weights never move',
  presets={'cifar10_resnet18': cifar10_resnet18},
  tune=('optimizer.lr', 'mask_fraction'),
)
def build(ctx: UnlearnContext, cfg: SalunConfig) -> Plan:
  plan = random_label.plan(ctx, cfg, saliency_mask=saliency_mask(ctx, float(cfg.mask_fraction)))
  return plan._replace(info={'trainable_fraction': float(cfg.mask_fraction)})
