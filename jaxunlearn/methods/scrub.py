"""SCRUB (Kurmanji et al., NeurIPS 2023): alternating max and min steps against the teacher.

Epoch e (1-based): if e <= `msteps`, one pass over D_f *maximising* KL(teacher || student); then
one pass over D_r minimising ``gamma * CE + alpha * KL(teacher || student)``. The KL is the
distillation loss at temperature T times T^2, batch mean. One optimiser (and its state) is shared
by both passes, as in the reference; the learning rate drops by `lr_decay_factor` at the epochs in
`lr_decay_epochs`. The teacher is the frozen original model; only the student moves.
"""


import jax

from jaxunlearn import losses
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import UnlearnContext, forward, gradient_step
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state


def schedule(epochs: int, msteps: int, forget_steps: int, retain_steps: int) -> list[str]:
  kinds = []
  for epoch in range(1, epochs + 1):
    if epoch <= msteps:
      kinds += ['max'] * forget_steps
    kinds += ['min'] * retain_steps
  return kinds


def build(ctx: UnlearnContext, cfg):
  forget_steps, retain_steps = ctx.steps_per_epoch('forget'), ctx.steps_per_epoch('retain')
  kinds = schedule(cfg.epochs, cfg.msteps, forget_steps, retain_steps)
  # Optimiser step counts at which the per-epoch learning-rate decays happen.
  opt_cfg = cfg.optimizer.copy_and_resolve_references()
  with opt_cfg.unlocked():
    opt_cfg.schedule = 'step'
    opt_cfg.lr_decay_steps = tuple(
        len(schedule(e - 1, cfg.msteps, forget_steps, retain_steps)) for e in cfg.lr_decay_epochs)
  tx = make_optimizer(opt_cfg, len(kinds))
  fns, temperature = ctx.model_fns, float(cfg.temperature)

  def kl_to_teacher(params, state, data):
    teacher, _ = fns.apply(state.extra['teacher'], data['image'], train=False)
    logits, batch_stats = forward(fns, params, state, data['image'])
    kl = losses.weighted_mean(
        losses.distillation_kl(jax.lax.stop_gradient(teacher), logits, temperature),
        data['weight'])
    return kl, logits, batch_stats

  def max_loss(params, state, batch, key):
    del key
    kl, _, batch_stats = kl_to_teacher(params, state, batch['forget'])
    return -kl, (batch_stats, {'forget_kl': kl})

  def min_loss(params, state, batch, key):
    del key
    data = batch['remain']
    kl, logits, batch_stats = kl_to_teacher(params, state, data)
    ce = losses.weighted_cross_entropy(logits, data['label'], data['weight'])
    return cfg.gamma * ce + cfg.alpha * kl, (batch_stats, {'remain_kl': kl, 'remain_ce': ce})

  program = Program({'max': StepKind(gradient_step(max_loss, tx), {'forget': 'forget'}),
                     'min': StepKind(gradient_step(min_loss, tx), {'remain': 'retain'})},
                    kinds, ctx.batch_size)
  return program, create_state(ctx.original, {'main': tx}, {'teacher': ctx.original})
