"""Kernel initialisers that are cheap to compile on CPU.

Same distributions as `jax.nn.initializers.variance_scaling` (fans from the kernel shape:
input features on axis -2, output features on axis -1, the rest a receptive field), but the
values are drawn as a flat vector of a power-of-two length, then cut and reshaped. XLA compiles
a random draw once per shape, about half a second each on CPU (several times more for an N-D
shape), and building a model otherwise compiles one per distinct kernel shape.
"""

import functools
import math

import jax
import jax.numpy as jnp

# Standard deviation of a standard normal truncated to (-2, 2).
_TRUNCATED_STDDEV = 0.87962566103423978
_MODES = ('fan_in', 'fan_out', 'fan_avg')
_DISTRIBUTIONS = ('truncated_normal', 'normal', 'uniform')


@functools.partial(jax.jit, static_argnames=('length', 'distribution', 'dtype'))
def _scaled_draw(
  key: jax.Array, stddev: jax.Array, *, length: int, distribution: str, dtype
) -> jax.Array:
  """`length` i.i.d. draws with mean 0 and standard deviation `stddev`."""
  if distribution == 'truncated_normal':
    unit = jax.random.truncated_normal(key, -2.0, 2.0, (length,), dtype) / _TRUNCATED_STDDEV
  elif distribution == 'normal':
    unit = jax.random.normal(key, (length,), dtype)
  else:
    unit = jax.random.uniform(key, (length,), dtype, -1.0, 1.0) * math.sqrt(3.0)
  return unit * stddev.astype(dtype)


def _draw(
  key: jax.Array, shape: tuple[int, ...], stddev: float, distribution: str, dtype
) -> jax.Array:
  size = math.prod(shape)
  length = 1 << max(size - 1, 0).bit_length()
  draw = _scaled_draw(
    key, jnp.asarray(stddev), length=length, distribution=distribution, dtype=jnp.dtype(dtype)
  )
  return draw[:size].reshape(shape)


def variance_scaling(scale: float, mode: str, distribution: str):
  """Initialiser with variance scale / fan (fan per `mode`), drawn from `distribution`."""
  if mode not in _MODES:
    raise ValueError(f'mode must be one of {_MODES}, got {mode!r}.')
  if distribution not in _DISTRIBUTIONS:
    raise ValueError(f'distribution must be one of {_DISTRIBUTIONS}, got {distribution!r}.')

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    shape = tuple(shape)
    receptive_field = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive_field, shape[-1] * receptive_field
    fan = {'fan_in': fan_in, 'fan_out': fan_out, 'fan_avg': (fan_in + fan_out) / 2}[mode]
    return _draw(key, shape, math.sqrt(scale / fan), distribution, dtype)

  return init


def normal(stddev: float):
  """Initialiser N(0, stddev^2) for any shape."""

  def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return _draw(key, tuple(shape), stddev, 'normal', dtype)

  return init


# Flax's default Linear/Conv kernel init.
lecun_normal = variance_scaling(1.0, 'fan_in', 'truncated_normal')
# He-normal over fan-out, torchvision's ResNet conv init.
he_normal_fan_out = variance_scaling(2.0, 'fan_out', 'normal')
# The usual ViT init.
xavier_uniform = variance_scaling(1.0, 'fan_avg', 'uniform')
# PEFT's LoRA A init, Kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
kaiming_uniform_sqrt5 = variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
