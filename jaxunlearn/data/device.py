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
from jaxunlearn.data.sources import DatasetInfo

# Zero pixels added on each side before the training crop.
CROP_PADDING = 4


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


def gather_images(images, info: DatasetInfo, positions, *, train: bool = False, key=None):
  """The images at `positions` of a dataset on device, gathered and preprocessed there.

  Args:
    images: the dataset's uint8 images [N, H, W, C] (`DeviceData.images`).
    info: its info (normalisation and augmentation).
    positions: int positions [B] into `images`.
    train: whether to augment (when the dataset does).
    key: the PRNG key of the augmentation (needed when augmenting).

  Returns:
    float32 [B, H, W, C], normalised (and augmented), as `preprocess` makes them.
  """
  return preprocess(jnp.take(images, positions, axis=0), info, train=train, key=key)


def gather_batch(
  data_images, data_labels, info: DatasetInfo, positions, weight, key, *, augment: bool
) -> dict:
  """Gathers and preprocesses one batch on device."""
  images = gather_images(data_images, info, positions, train=augment, key=key)
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


def _random_crop_and_flip(image: jax.Array, key: jax.Array) -> jax.Array:
  """One image [H,W,C]: zero-pad by CROP_PADDING, crop back to H x W at random, maybe flip."""
  crop_key, flip_key = jax.random.split(key)
  pad = CROP_PADDING
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
  cropped = jax.lax.dynamic_slice(padded, (top, left, 0), image.shape)
  return jnp.where(jax.random.bernoulli(flip_key), cropped[:, ::-1, :], cropped)


def preprocess(images, info: DatasetInfo, *, train: bool, key: jax.Array | None) -> jax.Array:
  """uint8 images [B,H,W,C] -> float32, normalised per channel, augmented when training.

  Pixels are scaled to [0, 1], then normalised by the dataset's mean and std. With `train` (a
  Python bool) and `info.augment`, each image gets its own random crop after 4-pixel padding and
  a random horizontal flip, drawn from `key`. The padding is black pixels (zero before
  normalisation), as in the usual torchvision recipe. A pure jnp function, for use inside
  jax.jit on sharded batches.
  """
  images = jnp.asarray(images)
  if images.dtype != jnp.uint8:
    raise ValueError(f'images: dtype {images.dtype}; allowed: uint8.')
  if images.ndim != 4 or images.shape[1:] != info.image_shape:
    raise ValueError(
      f'images: shape {images.shape}; allowed for {info.name}: '
      f'[B, {", ".join(map(str, info.image_shape))}].'
    )
  pixels = images.astype(jnp.float32) / 255.0
  if train and info.augment:
    if key is None:
      raise ValueError(f'key: got None; augmenting {info.name} in training needs a PRNG key.')
    pixels = jax.vmap(_random_crop_and_flip)(pixels, jax.random.split(key, images.shape[0]))
  return (pixels - jnp.asarray(info.mean, jnp.float32)) / jnp.asarray(info.std, jnp.float32)
