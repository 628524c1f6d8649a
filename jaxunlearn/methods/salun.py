"""SalUn (Fan et al., ICLR 2024): random-label unlearning restricted to salient weights.

The saliency mask keeps the top `mask_fraction` of all weights by |gradient of the forget loss| at
the original weights (the gradient of the mean CE over D_f, accumulated over its mini-batches as
the reference does, pooled over the whole network for one global threshold). The mask multiplies
the *final* update, after momentum and weight decay, so masked weights never move: masking only
the gradient lets momentum and weight decay move them (a bug users of the reference code hit).
"""

import jax
import jax.numpy as jnp

from jaxunlearn.methods import random_label
from jaxunlearn.methods.base import UnlearnContext, gradient_statistic, top_fraction_mask


def saliency_mask(ctx: UnlearnContext, fraction: float):
  grads = gradient_statistic(ctx.model_fns, ctx.original, ctx.data, 'forget', ctx.batch_size,
                             'mean_gradient')
  return top_fraction_mask(jax.tree.map(jnp.abs, grads), fraction)


def build(ctx: UnlearnContext, cfg):
  return random_label.build(ctx, cfg, saliency_mask=saliency_mask(ctx, float(cfg.mask_fraction)))
