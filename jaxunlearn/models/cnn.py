"""Small convolutional network, fast on CPU (MNIST-sized inputs)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import initializers


def _max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, odd edges dropped (as 'VALID' pooling).

  A reshape and max rather than nnx.max_pool: XLA on CPU differentiates a reduce_window
  max-pool several times slower.
  """
  batch, height, width, channels = x.shape
  x = x[:, : height // 2 * 2, : width // 2 * 2]
  return jnp.max(x.reshape(batch, height // 2, 2, width // 2, 2, channels), axis=(2, 4))


class MaxPool2x2(nnx.Module):
  """`_max_pool_2x2` as a submodule (no variables), so that each conv block's pooled output is a
  submodule's output, where `jaxunlearn.features` can capture it."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return _max_pool_2x2(x)


class CNN(nnx.Module):
  """[Conv 3x3 -> ReLU -> MaxPool 2x2] per entry of `channels` -> Dense -> ReLU -> head.

  Features (`feature_layers`): 'conv1', 'conv2', ... (each conv block's pooled output), 'dense1'
  (the hidden dense layer's ReLU output), then 'penultimate' (equal to 'dense1').
  `train` is accepted for a uniform model interface and has no effect.
  """

  def __init__(
    self,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    rngs: nnx.Rngs,
    channels: Sequence[int] = (32, 64),
    dense_width: int = 128,
  ):
    channels = tuple(channels)
    if not channels or any(int(c) < 1 for c in channels):
      raise ValueError(f'channels must be a non-empty sequence of positive ints, got {channels!r}.')
    if dense_width < 1:
      raise ValueError(f'dense_width must be a positive int, got {dense_width!r}.')
    height, width, in_channels = input_shape
    if min(height, width) < 2 ** len(channels):
      raise ValueError(
        f'input_shape {input_shape!r} is too small for {len(channels)} 2x2 max-pools '
        f'(channels={channels!r}); height and width must be >= {2 ** len(channels)}.'
      )
    widths = (in_channels,) + channels
    self.pools = nnx.List([MaxPool2x2() for _ in channels])
    self.convs = nnx.List(
      [
        nnx.Conv(
          c_in, c_out, (3, 3), padding='SAME', kernel_init=initializers.lecun_normal, rngs=rngs
        )
        for c_in, c_out in zip(widths[:-1], widths[1:])
      ]
    )
    for _ in channels:
      height, width = height // 2, width // 2
    self.dense = nnx.Linear(
      height * width * channels[-1], dense_width, kernel_init=initializers.lecun_normal, rngs=rngs
    )
    self.head = nnx.Linear(
      dense_width, num_classes, kernel_init=initializers.lecun_normal, rngs=rngs
    )

  def feature_layers(self) -> dict[str, str]:
    """Each conv block's pooled output, the hidden dense layer's ReLU output and the head's input
    (`jaxunlearn.features`)."""
    points = {f'conv{i + 1}': f'pools.{i}' for i in range(len(self.pools))}
    return {**points, 'dense1': 'head:input', 'penultimate': 'head:input'}

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    h = x
    for conv, pool in zip(self.convs, self.pools):
      h = pool(nnx.relu(conv(h)))
    h = nnx.relu(self.dense(jnp.reshape(h, (h.shape[0], -1))))
    return self.head(h)
