"""Fine-tuning with a discriminative regulariser on D_f (Ding, Xu, Ji, arXiv v1, Eqs. 6-7).

The linear theory (`jaxunlearn.theory`) shows plain fine-tuning keeps what the pretrained model
knows about D_f; these objectives add a term on D_f that pushes the model away from the true label,
while fitting D_r:

* CE-FT:  CE(D_r) + alpha * CE(D_f, y'), with y' a wrong label;
* KL-FT:  CE(D_r) + alpha * KL(q || p_theta(x_f)), q uniform over the wrong labels;
* ICE-FT: alpha * CE(D_r) + CE(D_f, y') (alpha moved onto the D_r term).

alpha is in (0, 1]. Readings, since v1 leaves them open: y' is drawn once per run and example,
uniformly over the other classes (as in `random_label`); the KL term's target q spreads the mass
uniformly over the wrong labels, so it has the same minimiser in expectation as CE to a random
wrong label but with no sampling noise, and it is bounded below by 0 (unlike ascent on the true
label's CE). Each step takes one remain batch and one forget batch; `epochs` passes over D_r.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxunlearn import losses
from jaxunlearn.config import EpochMethodConfig, OptimizerConfig, nested, number, sgd
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

VARIANTS = ('ce', 'kl', 'ice')


@dataclasses.dataclass(frozen=True)
class DiscriminativeConfig(EpochMethodConfig):
  """FT's settings plus alpha in (0, 1], so that retention is favoured over forgetting."""

  optimizer: OptimizerConfig = nested(lambda: sgd(0.02))
  alpha: float = number(0.5, gt=0, le=1)


def wrong_label_kl(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Per-example KL(q || softmax(logits)), q uniform over the classes other than `labels`."""
  q = (1.0 - jax.nn.one_hot(labels, num_classes)) / (num_classes - 1)
  log_q = jnp.log(jnp.where(q > 0, q, 1.0))
  return jnp.sum(q * (log_q - jax.nn.log_softmax(logits)), axis=-1)


def plan(ctx: UnlearnContext, cfg: DiscriminativeConfig, variant: str) -> Plan:
  """The plan of CE-FT, KL-FT or ICE-FT (`variant` 'ce', 'kl' or 'ice')."""
  if variant not in VARIANTS:
    raise ValueError(f'variant={variant!r}: allowed values are {VARIANTS}.')
  alpha = float(cfg.alpha)
  steps = cfg.epochs * ctx.steps_per_epoch('retain')
  tx = make_optimizer(cfg.optimizer, steps)
  fns, num_classes = ctx.model_fns, ctx.num_classes

  def loss_fn(params, state, batch, key, constants):
    del key
    remain, forget = batch['remain'], batch['forget']
    r_logits, batch_stats = forward(fns, params, state, remain['image'])
    f_logits, _ = forward(fns, params, state, forget['image'])
    r_loss = losses.weighted_cross_entropy(r_logits, remain['label'], remain['weight'])
    if variant == 'kl':
      f_loss = losses.weighted_mean(
        wrong_label_kl(f_logits, forget['label'], num_classes), forget['weight']
      )
    else:
      wrong = jnp.take(constants['random_labels'], forget['position'])
      f_loss = losses.weighted_cross_entropy(f_logits, wrong, forget['weight'])
    loss = alpha * r_loss + f_loss if variant == 'ice' else r_loss + alpha * f_loss
    return loss, (
      batch_stats,
      {
        'remain_ce': r_loss,
        'forget_term': f_loss,
        'forget_accuracy': losses.weighted_accuracy(f_logits, forget['label'], forget['weight']),
      },
    )

  constants = {
    'random_labels': random_other_labels(jax.random.key(ctx.seed), ctx.data.labels, num_classes)
  }
  kind = StepKind(gradient_step(loss_fn, tx), {'remain': 'retain', 'forget': 'forget'})
  return Plan(
    Program({variant: kind}, [variant] * steps, ctx.batch_size),
    create_state(ctx.original, {'main': tx}),
    constants,
  )


@register(
  'ce_ft',
  config=DiscriminativeConfig,
  title='CE-FT (Ding, Xu, Ji v1): FT + alpha CE(D_f, wrong label)',
  tune=('optimizer.lr', 'alpha'),
)
def ce_ft(ctx: UnlearnContext, cfg: DiscriminativeConfig) -> Plan:
  return plan(ctx, cfg, 'ce')


@register(
  'kl_ft',
  config=DiscriminativeConfig,
  title='KL-FT (Ding, Xu, Ji v1): FT + alpha KL(q, p), q uniform over wrong labels',
  tune=('optimizer.lr', 'alpha'),
)
def kl_ft(ctx: UnlearnContext, cfg: DiscriminativeConfig) -> Plan:
  return plan(ctx, cfg, 'kl')


@register(
  'ice_ft',
  config=DiscriminativeConfig,
  title='ICE-FT (Ding, Xu, Ji v1): alpha CE(D_r) + CE(D_f, wrong label)',
  tune=('optimizer.lr', 'alpha'),
)
def ice_ft(ctx: UnlearnContext, cfg: DiscriminativeConfig) -> Plan:
  return plan(ctx, cfg, 'ice')
