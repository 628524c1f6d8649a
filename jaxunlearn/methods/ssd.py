"""SSD, Selective Synaptic Dampening (Foster, Schoepf, Brintrup, AAAI 2024): retrain-free
unlearning by shrinking the weights that matter far more to D_f than to the whole training set.

Importances are diagonals of the Fisher information at the original weights: ``imp_D`` on the
full training set D = D_f u D_r and ``imp_f`` on D_f. Every weight i with
``imp_f[i] > alpha * imp_D[i]`` is multiplied by ``min(lambda * imp_D[i] / imp_f[i], 1)``; all
other weights stay bit-identical. There is no fine-tuning.

Readings, as the reference code does them: an importance is the mean over mini-batches of the
squared gradient of the batch-mean CE ('batch', the default); 'example' uses squared per-example
gradients (the exact Fisher diagonal) instead. Every parameter is dampened (BatchNorm scales and
biases included; running statistics are not parameters and stay). The passes run the model with
eval-mode BatchNorm and no augmentation (the reference's mode is set by its caller; eval mode keeps
the importances a function of the weights alone).

The dampening itself is one jitted step over the importances (run constants); RTE counts both
importance passes and that step.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxunlearn.config import Config, choice, integer, number
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import Plan, UnlearnContext, gradient_statistic
from jaxunlearn.methods.registry import register
from jaxunlearn.train import create_state

IMPORTANCES = {'batch': 'batch_fisher', 'example': 'empirical_fisher'}


@dataclasses.dataclass(frozen=True)
class SsdConfig(Config):
  """SSD's two constants and its importance passes.

  Defaults: the paper's lambda = 1 and alpha = 10 (ResNet-18); the mnist5k values chosen by
  measurement are in the 'mnist5k' preset's docstring.
  """
  dampening_constant: float = number(1.0, gt=0, doc='lambda')
  selection_weighting: float = number(10.0, gt=0, doc='alpha: dampen where imp_f > alpha imp_D')
  importance: str = choice('batch', tuple(IMPORTANCES), doc='squared batch-mean gradients '
                           "('batch', the reference) or squared per-example gradients")
  batch_size: int = integer(128, ge=1, doc='examples per importance batch')


def dampen(params, importance_all, importance_forget, *, dampening_constant: float,
           selection_weighting: float):
  """SSD's update of every parameter leaf.

  Args:
    params: the original parameters.
    importance_all: imp_D, shaped like `params`.
    importance_forget: imp_f, shaped like `params`.
    dampening_constant: lambda.
    selection_weighting: alpha.

  Returns:
    Parameters where ``imp_f > alpha imp_D`` are multiplied by ``min(lambda imp_D / imp_f, 1)``;
    the others are returned bit-identical.
  """

  def leaf(p, imp_d, imp_f):
    selected = imp_f > selection_weighting * imp_d
    factor = jnp.minimum(dampening_constant * imp_d / jnp.where(selected, imp_f, 1.0), 1.0)
    return jnp.where(selected, p * factor.astype(p.dtype), p)

  return jax.tree.map(leaf, params, importance_all, importance_forget)


def importances(ctx: UnlearnContext, cfg: SsdConfig) -> dict:
  """imp_D and imp_f at the original weights."""
  statistic = IMPORTANCES[cfg.importance]
  return {name: gradient_statistic(ctx.model_fns, ctx.original, ctx.data, source, cfg.batch_size,
                                   statistic)
          for name, source in (('all', 'all'), ('forget', 'forget'))}


@register('ssd', config=SsdConfig, title='SSD (Foster et al., AAAI 2024)',
          summary='retrain-free: dampens weights far more important to D_f than to D; no '
          'fine-tuning')
def build(ctx: UnlearnContext, cfg: SsdConfig) -> Plan:

  def step(state, batch, key, constants):
    del batch, key
    params = dampen(state.params, constants['all'], constants['forget'],
                    dampening_constant=cfg.dampening_constant,
                    selection_weighting=cfg.selection_weighting)
    return state.replace(params=params), {}

  program = Program({'dampen': StepKind(step, {})}, ['dampen'], cfg.batch_size)
  return Plan(program, create_state(ctx.original, {}), importances(ctx, cfg))
