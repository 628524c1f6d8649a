"""SCRUB (Kurmanji et al., NeurIPS 2023): alternating max and min steps against the teacher.

Epoch e (1-based): if e <= `msteps`, one pass over D_f *maximising* KL(teacher || student); then
one pass over D_r minimising ``gamma * CE + alpha * KL(teacher || student)``. The KL is the
distillation loss at temperature T times T^2, batch mean. One optimiser (and its state) is shared
by both passes, as in the reference; the learning rate drops by `lr_decay_factor` at the epochs in
`lr_decay_epochs`. The teacher is the frozen original model, a run constant; only the student
moves.
"""

import dataclasses

import jax

from jaxunlearn import losses
from jaxunlearn.config import (
  EpochMethodConfig,
  OptimizerConfig,
  integer,
  integers,
  nested,
  number,
  sgd,
)
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import Plan, UnlearnContext, forward, gradient_step
from jaxunlearn.methods.registry import register
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


@dataclasses.dataclass(frozen=True)
class ScrubConfig(EpochMethodConfig):
  """mnist5k defaults: the small-scale reference values (Adam lr 5e-4, alpha 0.5, gamma 1, T 2,
  msteps 3) over 5 epochs; its weight decay (0.1 in one notebook) is the 5e-4 of every other
  method."""

  optimizer: OptimizerConfig = nested(
    lambda: OptimizerConfig(
      name='adam', lr=5e-4, schedule='constant', momentum=0.9, weight_decay=5e-4
    )
  )
  msteps: int = integer(3, ge=0, doc='epochs with a max pass over D_f')
  alpha: float = number(0.5, ge=0, doc='weight of the KL term on D_r')
  gamma: float = number(1.0, ge=0, doc='weight of the CE term on D_r')
  temperature: float = number(2.0, gt=0)
  lr_decay_epochs: tuple = integers((3, 4), ge=1, doc='epochs after which the rate drops')

  def constraints(self):
    return (('msteps', self.msteps <= self.epochs, f'must be <= epochs ({self.epochs})'),)


def cifar10_resnet18() -> ScrubConfig:
  """The large-scale values of SCRUB's reference notebooks: SGD momentum 0.9, lr 5e-4, wd 5e-4,
  alpha 0.001, gamma 0.99, T 4, msteps 2, 3 epochs."""
  return ScrubConfig(
    epochs=3,
    optimizer=sgd(5e-4),
    msteps=2,
    alpha=0.001,
    gamma=0.99,
    temperature=4.0,
    lr_decay_epochs=(2,),
  )


def schedule(epochs: int, msteps: int, forget_steps: int, retain_steps: int) -> list[str]:
  kinds = []
  for epoch in range(1, epochs + 1):
    if epoch <= msteps:
      kinds += ['max'] * forget_steps
    kinds += ['min'] * retain_steps
  return kinds


@register(
  'scrub',
  config=ScrubConfig,
  title='SCRUB (Kurmanji et al., NeurIPS 2023)',
  summary='alternating max (D_f) / min (D_r) passes against the teacher',
  presets={'cifar10_resnet18': cifar10_resnet18},
  tune=('optimizer.lr', 'msteps'),
)
def build(ctx: UnlearnContext, cfg: ScrubConfig) -> Plan:
  forget_steps, retain_steps = ctx.steps_per_epoch('forget'), ctx.steps_per_epoch('retain')
  kinds = schedule(cfg.epochs, cfg.msteps, forget_steps, retain_steps)
  # Optimiser step counts at which the per-epoch learning-rate decays happen.
  decay_steps = tuple(
    len(schedule(e - 1, cfg.msteps, forget_steps, retain_steps)) for e in cfg.lr_decay_epochs
  )
  tx = make_optimizer(
    cfg.optimizer.replace(schedule='step', lr_decay_steps=decay_steps), len(kinds)
  )
  fns, temperature = ctx.model_fns, float(cfg.temperature)

  def kl_to_teacher(params, state, data, constants):
    teacher, _ = fns.apply(constants['teacher'], data['image'], train=False)
    logits, batch_stats = forward(fns, params, state, data['image'])
    kl = losses.weighted_mean(
      losses.distillation_kl(jax.lax.stop_gradient(teacher), logits, temperature), data['weight']
    )
    return kl, logits, batch_stats

  def max_loss(params, state, batch, key, constants):
    del key
    kl, _, batch_stats = kl_to_teacher(params, state, batch['forget'], constants)
    return -kl, (batch_stats, {'forget_kl': kl})

  def min_loss(params, state, batch, key, constants):
    del key
    data = batch['remain']
    kl, logits, batch_stats = kl_to_teacher(params, state, data, constants)
    ce = losses.weighted_cross_entropy(logits, data['label'], data['weight'])
    return cfg.gamma * ce + cfg.alpha * kl, (batch_stats, {'remain_kl': kl, 'remain_ce': ce})

  program = Program(
    {
      'max': StepKind(gradient_step(max_loss, tx), {'forget': 'forget'}),
      'min': StepKind(gradient_step(min_loss, tx), {'remain': 'retain'}),
    },
    kinds,
    ctx.batch_size,
  )
  return Plan(program, create_state(ctx.original, {'main': tx}), {'teacher': ctx.original})
