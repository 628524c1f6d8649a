"""BadTeacher (Chundawat et al., AAAI 2023): distil from the competent teacher (the original
model) on D_r and from an incompetent teacher (a randomly initialised model of the same
architecture) on D_f.

Each step draws a shuffled batch of D_f u D_r and minimises KL(teacher || student) at temperature
`temperature`, the teacher chosen per example. Reading: the reference trains on D_f plus a random
`retain_fraction` of D_r; here the pass covers all of D_r (`epochs` passes over the union), which
is the stronger retention setting and keeps the method deterministic given its seed. Both teachers
are run constants: they never move and are never checkpointed.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxunlearn import losses
from jaxunlearn.config import EpochMethodConfig, OptimizerConfig, integer, nested, number, sgd
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import Plan, UnlearnContext, forward, gradient_step
from jaxunlearn.methods.registry import register
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


@dataclasses.dataclass(frozen=True)
class BadTeacherConfig(EpochMethodConfig):
  """`epochs` passes over D_f u D_r."""

  epochs: int = integer(2, ge=1)
  optimizer: OptimizerConfig = nested(lambda: sgd(0.01))
  temperature: float = number(1.0, gt=0)


def cifar10_resnet18() -> BadTeacherConfig:
  """The SFR-on official code's BadTeacher baseline: lr 0.02, 10 epochs."""
  return BadTeacherConfig(epochs=10, optimizer=sgd(0.02))


@register(
  'bad_teacher',
  config=BadTeacherConfig,
  title='BadTeacher (Chundawat et al., AAAI 2023)',
  summary='competent/incompetent teacher distillation',
  presets={'cifar10_resnet18': cifar10_resnet18},
)
def build(ctx: UnlearnContext, cfg: BadTeacherConfig) -> Plan:
  steps = cfg.epochs * ctx.steps_per_epoch('all')
  tx = make_optimizer(cfg.optimizer, steps)
  temperature = float(cfg.temperature)
  fns = ctx.model_fns

  def loss_fn(params, state, batch, key, constants):
    del key
    data = batch['train']
    good, _ = fns.apply(constants['teacher'], data['image'], train=False)
    bad, _ = fns.apply(constants['bad_teacher'], data['image'], train=False)
    is_forget = jnp.take(constants['is_forget'], data['position'])[:, None]
    teacher = jax.lax.stop_gradient(jnp.where(is_forget > 0, bad, good))
    logits, batch_stats = forward(fns, params, state, data['image'])
    loss = losses.weighted_mean(
      losses.distillation_kl(teacher, logits, temperature), data['weight']
    )
    return loss, (batch_stats, {})

  constants = {
    'teacher': ctx.original,
    'bad_teacher': ctx.init_variables(ctx.seed + 1),
    'is_forget': ctx.is_forget(),
  }
  kind = StepKind(gradient_step(loss_fn, tx), {'train': 'all'})
  return Plan(
    Program({'distill': kind}, ['distill'] * steps, ctx.batch_size),
    create_state(ctx.original, {'main': tx}),
    constants,
  )
