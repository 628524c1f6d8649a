"""The named features every model returns, and running the rest of a model from a given feature.

A model records each block's output with `record`, which also lets a caller substitute a value for
it: ``model(x, replace_features={'conv2': mu})`` runs the layers after 'conv2' on `mu`
(broadcast over the batch) instead of on what the layers before it computed. RFA-LoRA uses this
to ask which class a mean feature predicts when pushed through the rest of the network.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import jax
import jax.numpy as jnp


def record(
  features: MutableMapping[str, jax.Array],
  name: str,
  h: jax.Array,
  replace: Mapping[str, jax.Array] | None,
) -> jax.Array:
  """Stores feature `name` and returns what the rest of the network sees.

  Args:
    features: the model's feature dict, filled shallow to deep.
    name: the feature's name.
    h: the value the layers before it computed, [B, ...].
    replace: None, or names -> values broadcastable to `h` (e.g. a mean feature without the
      batch axis) that replace the computed ones.

  Returns:
    `h`, or ``replace[name]`` broadcast to `h`'s shape and dtype; the same value is stored.
  """
  if replace is not None and name in replace:
    h = jnp.broadcast_to(jnp.asarray(replace[name], h.dtype), h.shape)
  features[name] = h
  return h
