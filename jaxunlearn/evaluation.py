"""The one evaluation path: logits (and optionally features) of a model on index sets of a dataset."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxunlearn import sharding as sharding_lib
from jaxunlearn.data import gather_images
from jaxunlearn.data.device import DeviceData
from jaxunlearn.state import ModelFns


@functools.lru_cache(maxsize=32)
def _predict_fn(model_fns: ModelFns, info, mesh):

  def predict(variables, images, positions):
    x = gather_images(images, info, positions)
    return model_fns.apply(variables, x, train=False)[0]

  return jax.jit(predict, out_shardings=sharding_lib.replicated(mesh))


def predict(
  model_fns: ModelFns,
  variables: dict,
  images: jax.Array,
  info,
  positions: np.ndarray,
  *,
  mesh,
  batch_size: int = 512,
) -> np.ndarray:
  """Eval-mode logits for `positions` of `images`, as numpy, in the order of `positions`.

  Batches are padded to one fixed, device-divisible size so the function compiles once.
  """
  fn = _predict_fn(model_fns, info, mesh)
  return _over_batches(lambda pos: fn(variables, images, pos), positions, mesh, batch_size)


def _over_batches(fn, positions: np.ndarray, mesh, batch_size: int, *, many: bool = False):
  """`fn(padded positions)` over `positions` in batches of one fixed size (a multiple of the
  mesh's devices, so each jitted function compiles once), as numpy in the order of `positions`.
  Single-model outputs have the examples first and each batch is sharded over the mesh's data
  axis; with `many`, outputs are [models, examples, ...] and batches are replicated."""
  n_dev = 1 if many else mesh.devices.size
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  axis = 1 if many else 0
  parts = []
  positions = np.asarray(positions, np.int32)
  for start in range(0, len(positions), batch_size):
    chunk = positions[start : start + batch_size]
    padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0], np.int32)])
    out = fn(padded if many else sharding_lib.shard_global_batch(padded, mesh))
    parts.append(jax.tree.map(functools.partial(_leading, size=len(chunk), axis=axis), out))
  return jax.tree.map(lambda *p: np.concatenate(p, axis=axis), *parts)


def _leading(array, *, size: int, axis: int) -> np.ndarray:
  """The first `size` entries of `array` along `axis` (the padding dropped), as numpy."""
  return np.take(np.asarray(array), np.arange(size), axis=axis)


def logits_on_sources(
  model_fns: ModelFns, variables: dict, data: DeviceData, *, mesh, batch_size: int = 512
) -> dict[str, np.ndarray]:
  """Logits on every named source of `data`."""
  return {
    name: predict(
      model_fns, variables, data.images, data.info, positions, mesh=mesh, batch_size=batch_size
    )
    for name, positions in data.sources.items()
  }


@functools.lru_cache(maxsize=32)
def _distance_fn(model_fns: ModelFns, reference_fns: ModelFns, info, mesh):

  def distances(variables, reference, images, positions):
    x = gather_images(images, info, positions)
    (_, features), _ = model_fns.apply(variables, x, train=False, return_features=True)
    (_, ref_features), _ = reference_fns.apply(reference, x, train=False, return_features=True)
    per_layer = {
      name: jnp.sqrt(
        jnp.sum(jnp.square((features[name] - ref_features[name]).reshape(x.shape[0], -1)), axis=-1)
      )
      for name in features
      if name != 'penultimate'
    }
    return per_layer, features['penultimate']

  return jax.jit(distances, out_shardings=sharding_lib.replicated(mesh))


def feature_distances(
  model_fns: ModelFns,
  variables: dict,
  reference_fns: ModelFns,
  reference: dict,
  images: jax.Array,
  info,
  positions: np.ndarray,
  *,
  mesh,
  batch_size: int = 512,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Per-example feature distances to a reference model, and the model's penultimate features.

  The distance of a layer is the L2 norm of the flattened difference of the two models' features
  (`metrics.feature_distance` before its mean over examples), for every feature but
  'penultimate'; it is computed on device, batch by batch, so no layer's features leave it.

  Returns:
    ({layer: distances [N]}, penultimate features [N, D]) for `positions`, in their order.
  """
  fn = _distance_fn(model_fns, reference_fns, info, mesh)
  return _over_batches(
    lambda pos: fn(variables, reference, images, pos), positions, mesh, batch_size
  )


@functools.lru_cache(maxsize=32)
def _predict_many_fn(model_fns: ModelFns, info, mesh):

  def predict(variables, images, positions):
    x = gather_images(images, info, positions)
    return model_fns.apply(variables, x, train=False)[0]

  models = PartitionSpec(sharding_lib.MODEL_AXIS)
  # Under shard_map, as in `loop.run_many`: each device group evaluates the models it holds.
  many = jax.shard_map(
    jax.vmap(predict, in_axes=(0, None, None)),
    mesh=mesh,
    in_specs=(models, PartitionSpec(), PartitionSpec()),
    out_specs=models,
    axis_names={sharding_lib.MODEL_AXIS},
    check_vma=False,
  )
  return jax.jit(many)


def predict_many(
  model_fns: ModelFns,
  variables: dict,
  images: jax.Array,
  info,
  positions: np.ndarray,
  *,
  mesh,
  batch_size: int = 512,
) -> np.ndarray:
  """Eval-mode logits [K, N, C] of K models (variables with a leading model axis, sharded over
  the ('models', 'data') mesh's model axis) on `positions`, in their order."""
  fn = _predict_many_fn(model_fns, info, mesh)
  return _over_batches(
    lambda pos: fn(variables, images, pos), positions, mesh, batch_size, many=True
  )
