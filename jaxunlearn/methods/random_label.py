"""RL: train on D_f with random labels together with D_r (Golatkar et al.; SalUn's RL baseline).

Reading: like the SalUn reference, the random labels are drawn once per run and the model trains
on the union D_f u D_r in shuffled batches. Unlike that reference, which draws labels uniformly
over all classes (so a forget example keeps its true label with probability 1/C), labels are drawn
uniformly over the *other* classes: the true label is never drawn. `plan` with a saliency mask
(SalUn) makes the same objective update only masked weights.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxunlearn import losses
from jaxunlearn.config import EpochMethodConfig, OptimizerConfig, integer, nested, sgd
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import (
  Plan,
  UnlearnContext,
  forward,
  gradient_step,
  random_other_labels,
)
from jaxunlearn.methods.registry import register
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


@dataclasses.dataclass(frozen=True)
class RandomLabelConfig(EpochMethodConfig):
  """`epochs` passes over D_f u D_r."""

  epochs: int = integer(3, ge=1)
  optimizer: OptimizerConfig = nested(lambda: sgd(0.01))


def cifar10_resnet18() -> RandomLabelConfig:
  """The SFR-on official code's RL baseline: lr 0.003, 10 epochs."""
  return RandomLabelConfig(epochs=10, optimizer=sgd(0.003))


def relabel_loss(model_fns):
  """CE on an 'all' batch where D_f examples carry their random label (constants
  'is_forget' and 'random_labels')."""

  def loss_fn(params, state, batch, key, constants):
    del key
    data = batch['train']
    is_forget = jnp.take(constants['is_forget'], data['position'])
    labels = jnp.where(
      is_forget > 0, jnp.take(constants['random_labels'], data['position']), data['label']
    )
    logits, batch_stats = forward(model_fns, params, state, data['image'])
    loss = losses.weighted_cross_entropy(logits, labels, data['weight'])
    forget_w = data['weight'] * is_forget
    return loss, (
      batch_stats,
      {'forget_accuracy_true': losses.weighted_accuracy(logits, data['label'], forget_w)},
    )

  return loss_fn


def plan(ctx: UnlearnContext, cfg: EpochMethodConfig, saliency_mask=None) -> Plan:
  """RL's plan; with `saliency_mask` (a 0/1 PyTree), it multiplies every final update."""
  steps = cfg.epochs * ctx.steps_per_epoch('all')
  tx = make_optimizer(cfg.optimizer, steps)
  constants = {
    'is_forget': ctx.is_forget(),
    'random_labels': random_other_labels(
      jax.random.key(ctx.seed), ctx.data.labels, ctx.num_classes
    ),
  }
  if saliency_mask is not None:
    constants['mask'] = saliency_mask
  kind = StepKind(
    gradient_step(
      relabel_loss(ctx.model_fns), tx, mask='mask' if saliency_mask is not None else None
    ),
    {'train': 'all'},
  )
  return Plan(
    Program({'relabel': kind}, ['relabel'] * steps, ctx.batch_size),
    create_state(ctx.original, {'main': tx}),
    constants,
  )


@register(
  'rl',
  config=RandomLabelConfig,
  title='RL (random labels on D_f, with D_r)',
  summary='the true label is never drawn',
  presets={'cifar10_resnet18': cifar10_resnet18},
)
def build(ctx: UnlearnContext, cfg: RandomLabelConfig) -> Plan:
  return plan(ctx, cfg)
