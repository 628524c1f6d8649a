"""Synthetic over-parameterised linear-regression tasks (Ding, Xu & Ji, arXiv:2410.03833v1).

The d coordinates ("features") are laid out in three contiguous blocks,

  [ remaining-only (d_r_only) | shared (d_lap) | forget-only (d_f_only) ],

the remaining data D_r is non-zero exactly on the first two blocks and the forget data D_f on the
last two. d_lap = 0 is the paper's distinct-features scenario, d_lap > 0 its overlapping-features
scenario, and d_lap = d the limit where every feature is shared.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class LinRegTask(NamedTuple):
  """One sampled task. Arrays may carry a leading seed axis when built under `jax.vmap`.

  Attributes:
    x_r: remaining inputs, (n_r, d).
    y_r: remaining targets, (n_r,), y_r = x_r @ w_r_star (+ noise).
    x_f: forget inputs, (n_f, d).
    y_f: forget targets, (n_f,), y_f = x_f @ w_f_star (+ noise).
    w_r_star: ground truth of D_r, supported on `r_support`.
    w_f_star: ground truth of D_f, supported on `f_support`.
    r_support: bool (d,), coordinates on which D_r is non-zero.
    f_support: bool (d,), coordinates on which D_f is non-zero.
  """

  x_r: jax.Array
  y_r: jax.Array
  x_f: jax.Array
  y_f: jax.Array
  w_r_star: jax.Array
  w_f_star: jax.Array
  r_support: jax.Array
  f_support: jax.Array


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Sizes of a task; validated on construction.

  Attributes:
    d: number of coordinates.
    n_r: number of remaining examples.
    n_f: number of forget examples.
    d_lap: number of shared coordinates (0 = distinct features).
    r_only_fraction: share of the d - d_lap unshared coordinates that belong to D_r only.
    noise_std: standard deviation of Gaussian label noise (0 = the paper's noiseless targets).
  """

  d: int
  n_r: int
  n_f: int
  d_lap: int = 0
  r_only_fraction: float = 0.5
  noise_std: float = 0.0

  def __post_init__(self):
    for name in ('d', 'n_r', 'n_f'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name} must be a positive integer, got {value!r}.')
    if not isinstance(self.d_lap, (int, np.integer)) or not 0 <= self.d_lap <= self.d:
      raise ValueError(f'd_lap must be an integer in [0, d={self.d}], got {self.d_lap!r}.')
    if not 0.0 < self.r_only_fraction < 1.0:
      raise ValueError(f'r_only_fraction must be in (0, 1), got {self.r_only_fraction!r}.')
    if not self.noise_std >= 0.0:
      raise ValueError(f'noise_std must be >= 0, got {self.noise_std!r}.')
    if self.n_r + self.n_f >= self.d:
      raise ValueError(
        f'n_r + n_f must be < d (over-parameterised), got n_r={self.n_r}, '
        f'n_f={self.n_f}, d={self.d}.'
      )
    # Each data set must be under-determined on its own features, otherwise fine-tuning has no
    # freedom left and the regimes of the paper do not apply.
    if self.n_r >= self.d_r:
      raise ValueError(
        f'n_r must be < d_r = d_r_only + d_lap = {self.d_r}, got n_r={self.n_r} '
        f'(d={self.d}, d_lap={self.d_lap}, r_only_fraction={self.r_only_fraction}).'
      )
    if self.n_f >= self.d_f:
      raise ValueError(
        f'n_f must be < d_f = d_f_only + d_lap = {self.d_f}, got n_f={self.n_f} '
        f'(d={self.d}, d_lap={self.d_lap}, r_only_fraction={self.r_only_fraction}).'
      )

  @property
  def d_r_only(self) -> int:
    return int(round(self.r_only_fraction * (self.d - self.d_lap)))

  @property
  def d_f_only(self) -> int:
    return self.d - self.d_lap - self.d_r_only

  @property
  def d_r(self) -> int:
    return self.d_r_only + self.d_lap

  @property
  def d_f(self) -> int:
    return self.d_f_only + self.d_lap

  def supports(self) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (d,) of the coordinates used by D_r and by D_f."""
    index = np.arange(self.d)
    return index < self.d_r, index >= self.d_r_only


def _sample(key, r_support, f_support, noise_std, n_r, n_f, dtype) -> LinRegTask:
  """Draws one task; the supports are arrays so that one compilation serves every overlap."""
  r_mask = r_support.astype(dtype)
  f_mask = f_support.astype(dtype)
  d = r_support.shape[0]
  # One draw cut into pieces: each extra random call adds a threefry kernel and compile time.
  sizes = (n_r * d, n_f * d, d, d, n_r, n_f)
  pieces = jnp.split(jax.random.normal(key, (sum(sizes),), dtype), np.cumsum(sizes)[:-1])
  x_r = pieces[0].reshape(n_r, d) * r_mask
  x_f = pieces[1].reshape(n_f, d) * f_mask
  w_r_star = pieces[2] * r_mask / jnp.sqrt(jnp.sum(r_mask))
  w_f_star = pieces[3] * f_mask / jnp.sqrt(jnp.sum(f_mask))
  y_r = x_r @ w_r_star + noise_std * pieces[4]
  y_f = x_f @ w_f_star + noise_std * pieces[5]
  return LinRegTask(x_r, y_r, x_f, y_f, w_r_star, w_f_star, r_support, f_support)


_STATIC = ('n_r', 'n_f', 'dtype')
_sample_one = jax.jit(_sample, static_argnames=_STATIC)
_sample_many = jax.jit(
  jax.vmap(_sample, in_axes=(0, None, None, None, None, None, None)), static_argnums=(4, 5, 6)
)


def _sampler_args(spec: TaskSpec, dtype):
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64 if dtype is None else dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f'dtype must be a float dtype, got {dtype}.')
  r_support, f_support = spec.supports()
  return (
    jnp.asarray(r_support),
    jnp.asarray(f_support),
    jnp.asarray(spec.noise_std, dtype),
    spec.n_r,
    spec.n_f,
    dtype,
  )


def make_task(key: jax.Array, spec: TaskSpec, dtype=None) -> LinRegTask:
  """Samples a task: inputs N(0, 1) on each data set's features, ground truths N(0, 1/support).

  The ground-truth scale gives each noiseless target unit variance. D_r and D_f get independent
  ground truths, so on shared features they disagree.

  Args:
    key: a jax.random key.
    spec: the sizes.
    dtype: float dtype of the arrays; None = JAX's default float (float64 under x64).
  """
  r_support, f_support, noise_std, n_r, n_f, dtype = _sampler_args(spec, dtype)
  return _sample_one(key, r_support, f_support, noise_std, n_r=n_r, n_f=n_f, dtype=dtype)


def make_tasks(key: jax.Array, spec: TaskSpec, num_seeds: int, dtype=None) -> LinRegTask:
  """`num_seeds` independent tasks stacked along a leading axis (one split of `key` each)."""
  if not isinstance(num_seeds, (int, np.integer)) or num_seeds < 1:
    raise ValueError(f'num_seeds must be a positive integer, got {num_seeds!r}.')
  keys = jax.random.split(key, num_seeds)
  return _sample_many(keys, *_sampler_args(spec, dtype))
