"""Datasets held on device, and the index batches drawn from them.

`DeviceData` keeps a split's images and labels on every device of the mesh with named index sets
(sources: 'all', 'forget', 'retain', 'test', ...). Batches are positions into it, drawn on the host
by `BatchSampler` and gathered and preprocessed inside the jitted step by `gather_batch`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import sharding as sharding_lib
from jaxunlearn.data.datasets import DatasetInfo, preprocess


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """A dataset's arrays on device plus named index sets (sources) into them."""

  images: jax.Array
  labels: jax.Array
  info: DatasetInfo
  sources: Mapping[str, np.ndarray]

  @classmethod
  def create(
    cls,
    images: np.ndarray,
    labels: np.ndarray,
    info: DatasetInfo,
    sources: Mapping[str, np.ndarray],
    mesh,
  ) -> DeviceData:
    for name, positions in sources.items():
      if len(positions) == 0:
        raise ValueError(f'data source {name!r} is empty')
    arrays = sharding_lib.replicate({'images': images, 'labels': labels.astype(np.int32)}, mesh)
    return cls(
      arrays['images'],
      arrays['labels'],
      info,
      {k: np.asarray(v, np.int64) for k, v in sources.items()},
    )

  def size(self, source: str) -> int:
    return len(self.sources[source])


class BatchSampler:
  """Index batches of one source: a fresh permutation each epoch, seeded by (seed, source, epoch)."""

  def __init__(self, positions: np.ndarray, batch_size: int, seed: int, source: str):
    self.positions = positions
    self.batch_size = batch_size
    self.batches_per_epoch = math.ceil(len(positions) / batch_size)
    self._seed = (seed, zlib.crc32(source.encode()))
    self._epoch, self._perm = -1, None

  def batch(self, draw: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and 0/1 weights of the `draw`-th batch of this source."""
    epoch, k = divmod(draw, self.batches_per_epoch)
    if epoch != self._epoch:
      rng = np.random.default_rng((*self._seed, epoch))
      self._epoch, self._perm = epoch, rng.permutation(self.positions)
    chunk = self._perm[k * self.batch_size : (k + 1) * self.batch_size]
    pad = self.batch_size - len(chunk)
    weight = np.concatenate([np.ones(len(chunk), np.float32), np.zeros(pad, np.float32)])
    positions = np.concatenate([chunk, np.full(pad, chunk[0], chunk.dtype)]).astype(np.int32)
    return positions, weight


def epoch_steps(num_examples: int, batch_size: int) -> int:
  return math.ceil(num_examples / batch_size)


def gather_batch(
  data_images, data_labels, info: DatasetInfo, positions, weight, key, *, augment: bool
) -> dict:
  """Gathers and preprocesses one batch on device."""
  images = preprocess(jnp.take(data_images, positions, axis=0), info, train=augment, key=key)
  return {
    'image': images,
    'label': jnp.take(data_labels, positions, axis=0),
    'weight': weight,
    'position': positions,
  }


def padded_chunks(positions: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """`positions` cut into rows of `batch_size` (the last one padded with its first position) and
  the matching 0/1 weights, both [chunks, batch_size]: a whole set at one fixed shape."""
  positions = np.asarray(positions, np.int32)
  chunks = math.ceil(len(positions) / batch_size)
  padded = np.concatenate(
    [positions, np.full(chunks * batch_size - len(positions), positions[0], np.int32)]
  )
  weight = (np.arange(len(padded)) < len(positions)).astype(np.float32)
  return padded.reshape(chunks, batch_size), weight.reshape(chunks, batch_size)


CHUNK_LOOPS = ('auto', 'scan', 'host')


def chunked_sum(fn, positions: np.ndarray, batch_size: int, *args, keys=None, loop: str = 'auto'):
  """The sum over `positions`, cut into padded chunks of `batch_size`, of
  ``fn(*args, chunk_positions, chunk_weights[, chunk_key])`` (a PyTree), in one pass on device.

  The last chunk is padded with zero-weight rows, so `fn` weighting its rows counts each example
  once. `keys`, if given, holds one PRNG key per chunk. `loop` 'scan' runs the pass as one jitted
  `lax.scan`; 'host' dispatches one jitted accumulation per chunk from a Python loop (on-device
  sums, no host sync until the end); 'auto' is 'host' on CPU, where XLA runs a rolled scan around
  a convolution's gradient several times slower (`methods.base.gradient_statistic` gives the
  timings), and 'scan' elsewhere, where it is one dispatch.
  """
  if loop not in CHUNK_LOOPS:
    raise ValueError(f'loop={loop!r}: allowed values are {CHUNK_LOOPS}.')
  chunks = padded_chunks(positions, batch_size)
  if keys is not None:
    chunks = (*chunks, keys)
  zeros = jax.tree.map(
    lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(fn, *args, *(c[0] for c in chunks))
  )
  if loop == 'host' or (loop == 'auto' and jax.default_backend() == 'cpu'):
    accumulate = jax.jit(lambda total, *xs: jax.tree.map(jnp.add, total, fn(*xs)))
    total = zeros
    for chunk in zip(*chunks):
      total = accumulate(total, *args, *chunk)
    return total

  @jax.jit
  def sweep(args, chunks):
    body = lambda total, chunk: (jax.tree.map(jnp.add, total, fn(*args, *chunk)), None)
    return jax.lax.scan(body, zeros, chunks)[0]

  return sweep(args, chunks)
