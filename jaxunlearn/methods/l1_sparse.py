"""l1-sparse (Jia et al., NeurIPS 2023): fine-tune on D_r with an l1 penalty on every weight.

The penalty weight decays linearly per epoch, ``alpha * (1 - epoch / epochs)``, as the reference
implementation does, so early epochs sparsify and late ones recover accuracy.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxunlearn.config import EpochMethodConfig, OptimizerConfig, nested, number, sgd
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import Plan, UnlearnContext, cross_entropy_loss, gradient_step
from jaxunlearn.methods.registry import register
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


@dataclasses.dataclass(frozen=True)
class L1SparseConfig(EpochMethodConfig):
  """FT's settings plus the initial l1 weight."""

  optimizer: OptimizerConfig = nested(lambda: sgd(0.02))
  alpha: float = number(5e-5, ge=0, doc='l1 weight at epoch 0, decaying linearly to 0')


def cifar10_resnet18() -> L1SparseConfig:
  """Our settings (not from the SFR-on code's baselines): lr 0.01, 10 epochs, alpha 5e-4; check
  them against the paper's released configuration before quoting numbers."""
  return L1SparseConfig(epochs=10, optimizer=sgd(0.01), alpha=5e-4)


@register(
  'l1_sparse',
  config=L1SparseConfig,
  title='l1-sparse (Jia et al., NeurIPS 2023)',
  summary='FT + a decaying l1 penalty',
  presets={'cifar10_resnet18': cifar10_resnet18},
  tune=('optimizer.lr', 'alpha'),
)
def build(ctx: UnlearnContext, cfg: L1SparseConfig) -> Plan:
  steps_per_epoch = ctx.steps_per_epoch('retain')
  steps = cfg.epochs * steps_per_epoch
  tx = make_optimizer(cfg.optimizer, steps)
  remain_loss = cross_entropy_loss(ctx.model_fns, 'remain')
  alpha, epochs = float(cfg.alpha), int(cfg.epochs)

  def loss_fn(params, state, batch, key, constants):
    loss, (batch_stats, metrics) = remain_loss(params, state, batch, key, constants)
    epoch = state.step // steps_per_epoch
    current_alpha = alpha * (1.0 - epoch / epochs)
    l1 = sum(jnp.sum(jnp.abs(p)) for p in jax.tree.leaves(params))
    return loss + current_alpha * l1, (batch_stats, {**metrics, 'l1': l1})

  kind = StepKind(gradient_step(loss_fn, tx), {'remain': 'retain'})
  return Plan(
    Program({'remain': kind}, ['remain'] * steps, ctx.batch_size),
    create_state(ctx.original, {'main': tx}),
    {},
  )
