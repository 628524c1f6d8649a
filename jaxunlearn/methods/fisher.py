"""Fisher diagonals at the original weights, their on-disk cache, and forget/remain saliency masks.

SFR-on's saliency mask compares how much each weight matters to the forget data and to the remain
data: ``m = 1[(F_f + eps) / (F_r + eps) >= gamma]`` with F_f, F_r Fisher diagonals at theta_0.

A Fisher pass over D_r is the costliest part of preparing SFR-on, and it depends only on the
original weights, the examples of the set, the estimator and (for the mini-batch estimator) the
batch size. `fisher_diagonal` therefore caches each diagonal in a file whose name holds a digest of
exactly those: a changed checkpoint, seed or split never reuses a stale diagonal (the official
code's cache is one fixed file name per output directory, so it would).
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxunlearn import files
from jaxunlearn.methods.base import UnlearnContext, gradient_statistic, top_fraction_mask

ESTIMATORS = ('batch_fisher', 'empirical_fisher')
THRESHOLDS = ('ratio', 'quantile')
CACHE_FORMAT = 1  # bump when the statistic's definition changes


def fisher_cache_key(
  variables: dict, positions: np.ndarray, estimator: str, batch_size: int, dataset: str
) -> str:
  """A hex digest of everything a Fisher diagonal depends on: the weights and BatchNorm
  statistics (names, shapes, dtypes and bytes), the set's example positions, the estimator, the
  batch size and the dataset."""
  h = hashlib.sha256()
  h.update(f'v{CACHE_FORMAT}|{dataset}|{estimator}|{int(batch_size)}|'.encode())
  leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))
  for path, leaf in leaves:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  h.update(b'|positions|')
  h.update(np.ascontiguousarray(np.asarray(positions, np.int64)).tobytes())
  return h.hexdigest()


def cache_path(cache_dir: str, source: str, estimator: str, batch_size: int, key: str) -> str:
  return os.path.join(cache_dir, f'fisher_{source}_{estimator}_b{batch_size}_{key[:24]}.npz')


def _save(path: str, tree, seconds: float) -> None:
  leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
  with files.atomic_file(path, 'wb') as f:
    np.savez(f, __seconds__=np.float64(seconds), **arrays)


def _load(path: str, like) -> tuple[Any, float] | None:
  """The cached tree shaped like `like`, and the seconds its computation took; None when the file
  is missing or does not match `like` (then it is recomputed and overwritten)."""
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    stored = {k: f[k] for k in f.files}
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  values = []
  for p, leaf in leaves:
    value = stored.get(jax.tree_util.keystr(p))
    if value is None or value.shape != np.shape(leaf):
      return None
    values.append(jnp.asarray(value))
  return jax.tree_util.tree_unflatten(treedef, values), float(stored['__seconds__'])


def fisher_diagonal(
  ctx: UnlearnContext, source: str, estimator: str, batch_size: int, *, cache_dir: str = ''
) -> Any:
  """The Fisher diagonal of the CE loss on `source` ('forget' or 'retain') at the original weights.

  * 'batch_fisher' (the official code): the squared gradient of the batch-mean loss, averaged over
    the mini-batches of `batch_size` (the last one partial);
  * 'empirical_fisher' (the paper's formula): the squared per-example gradient averaged over the
    examples (`batch_size` only sets how many are processed at once).

  One pass over the set (`base.gradient_statistic`): a jitted `lax.scan` on GPU/TPU, one jitted
  accumulation per batch dispatched from a host loop on CPU, where the rolled scan is several
  times slower (a fully unrolled scan runs as fast as the host loop but compiles in time linear in
  the number of batches). Eval-mode BatchNorm,
  no augmentation (the official code draws the batches through its training transform, i.e.
  randomly cropped and flipped). With `cache_dir`, the result is read from / written to a file
  keyed by `fisher_cache_key`.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f'saliency_estimator={estimator!r}: allowed values are {ESTIMATORS}.')
  path = None
  if cache_dir:
    key = fisher_cache_key(
      ctx.original, ctx.data.sources[source], estimator, batch_size, ctx.data.info.name
    )
    path = cache_path(cache_dir, source, estimator, batch_size, key)
    cached = _load(path, ctx.original['params'])
    if cached is not None:
      logging.info(
        'Fisher %s/%s read from %s (computed in %.1f s)', source, estimator, path, cached[1]
      )
      return cached[0]
  t0 = time.perf_counter()
  fisher = jax.block_until_ready(
    gradient_statistic(ctx.model_fns, ctx.original, ctx.data, source, batch_size, estimator)
  )
  seconds = time.perf_counter() - t0
  logging.info('Fisher %s/%s computed in %.1f s', source, estimator, seconds)
  if path is not None and jax.process_index() == 0:
    _save(path, fisher, seconds)
  return fisher


def saliency_mask(
  fisher_forget,
  fisher_remain,
  *,
  threshold: str = 'ratio',
  gamma: float = 1.0,
  fraction: float = 0.5,
  eps: float = 1e-15,
):
  """The forget/remain saliency mask, a 0/1 float32 PyTree shaped like the parameters.

  The saliency of a weight is ``(F_f + eps) / (F_r + eps)`` (float32; a weight with no gradient on
  either set has saliency exactly 1, so gamma = 1 keeps it, as the official code does).
  'ratio' keeps the weights with saliency >= `gamma` (the paper and the official code, gamma = 1);
  'quantile' keeps exactly round(`fraction` x #weights) of them, the most salient ones pooled over
  the whole network, ties broken by position (`base.top_fraction_mask`).
  """
  if threshold not in THRESHOLDS:
    raise ValueError(f'saliency_threshold={threshold!r}: allowed values are {THRESHOLDS}.')
  eps = jnp.float32(eps)
  ratio = jax.tree.map(lambda f, r: (f + eps) / (r + eps), fisher_forget, fisher_remain)
  if threshold == 'ratio':
    return jax.tree.map(lambda s: (s >= jnp.float32(gamma)).astype(jnp.float32), ratio)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'saliency_fraction={fraction!r}: allowed values are in [0, 1].')
  return top_fraction_mask(ratio, fraction)


def mask_density(mask) -> float:
  """The fraction of weights the mask keeps."""
  leaves = jax.tree.leaves(mask)
  return float(sum(jnp.sum(m) for m in leaves) / sum(m.size for m in leaves))
