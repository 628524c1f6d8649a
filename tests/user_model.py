"""A researcher's own model, as a user writes it: plain NNX, logits only, no jaxunlearn import.

Tests load it by import path (`--config.model=tests.user_model:Net`) and as a Python class.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class Net(nnx.Module):
  """conv -> BatchNorm -> ReLU -> conv -> ReLU -> global mean -> fc -> ReLU -> fc."""

  def __init__(self, *, num_classes: int, rngs: nnx.Rngs, width: int = 8):
    self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(width, rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), strides=2, rngs=rngs)
    self.fc1 = nnx.Linear(2 * width, 16, rngs=rngs)
    self.fc2 = nnx.Linear(16, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    h = nnx.relu(self.conv2(h))
    h = nnx.relu(self.fc1(jnp.mean(h, axis=(1, 2))))
    return self.fc2(h)


class WrongShape(nnx.Module):
  """Returns one score per example instead of logits."""

  def __init__(self, *, num_classes: int, rngs: nnx.Rngs):
    self.fc = nnx.Linear(64, 1, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.fc(x.reshape(x.shape[0], -1))[:, 0]


NOT_CALLABLE = 3
