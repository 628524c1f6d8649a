"""RL: train on D_f with random labels together with D_r (Golatkar et al.; SalUn's RL baseline).

Reading: like the SalUn reference, the random labels are drawn once per run and the model trains
on the union D_f u D_r in shuffled batches. Unlike that reference, which draws labels uniformly
over all classes (so a forget example keeps its true label with probability 1/C), labels are drawn
uniformly over the *other* classes: the true label is never drawn. `saliency_mask` (SalUn) makes
the same objective update only masked weights.
"""

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import losses
from jaxunlearn.loop import Program, StepKind
from jaxunlearn.methods.base import UnlearnContext, forward, gradient_step, random_other_labels
from jaxunlearn.optim import make_optimizer, mask_final_update
from jaxunlearn.train import create_state


def relabel_loss(model_fns):
  """CE on an 'all' batch where D_f examples carry their random label."""

  def loss_fn(params, state, batch, key):
    del key
    data = batch['train']
    is_forget = jnp.take(state.extra['is_forget'], data['position'])
    labels = jnp.where(is_forget > 0, jnp.take(state.extra['random_labels'], data['position']),
                       data['label'])
    logits, batch_stats = forward(model_fns, params, state, data['image'])
    loss = losses.weighted_cross_entropy(logits, labels, data['weight'])
    forget_w = data['weight'] * is_forget
    return loss, (batch_stats, {
        'forget_accuracy_true': losses.weighted_accuracy(logits, data['label'], forget_w)})

  return loss_fn


def build(ctx: UnlearnContext, cfg, saliency_mask=None):
  steps = cfg.epochs * ctx.steps_per_epoch('all')
  tx = make_optimizer(cfg.optimizer, steps)
  if saliency_mask is not None:
    tx = optax.chain(tx, mask_final_update(saliency_mask))
  true_labels = ctx.data.labels
  random_labels = random_other_labels(jax.random.key(ctx.seed), true_labels, ctx.num_classes)
  extra = {'is_forget': ctx.is_forget(), 'random_labels': random_labels}
  kind = StepKind(gradient_step(relabel_loss(ctx.model_fns), tx), {'train': 'all'})
  return Program({'relabel': kind}, ['relabel'] * steps, ctx.batch_size), create_state(
      ctx.original, {'main': tx}, extra)
