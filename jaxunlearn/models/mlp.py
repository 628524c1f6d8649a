"""Multi-layer perceptron on flattened images."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import initializers


class MLP(nnx.Module):
  """Flatten -> [Linear -> ReLU] * len(hidden_sizes) -> Linear head.

  Features (`feature_layers`): 'dense0', 'dense1', ... (each hidden layer's ReLU output), then
  'penultimate' (the last hidden layer's output, the head's input).
  `train` is accepted for a uniform model interface and has no effect.
  """

  def __init__(
    self,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    rngs: nnx.Rngs,
    hidden_sizes: Sequence[int] = (256, 256),
  ):
    hidden_sizes = tuple(hidden_sizes)
    if not hidden_sizes or any(int(h) < 1 for h in hidden_sizes):
      raise ValueError(
        f'hidden_sizes must be a non-empty sequence of positive ints, got {hidden_sizes!r}.'
      )
    in_features = input_shape[0] * input_shape[1] * input_shape[2]
    widths = (in_features,) + hidden_sizes
    self.hidden = nnx.List(
      [
        nnx.Linear(w_in, w_out, kernel_init=initializers.lecun_normal, rngs=rngs)
        for w_in, w_out in zip(widths[:-1], widths[1:])
      ]
    )
    self.head = nnx.Linear(
      widths[-1], num_classes, kernel_init=initializers.lecun_normal, rngs=rngs
    )

  def feature_layers(self) -> dict[str, str]:
    """Each hidden layer's ReLU output (the next layer's input) and the head's input
    (`jaxunlearn.features`)."""
    after = [f'hidden.{i}' for i in range(1, len(self.hidden))] + ['head']
    points = {f'dense{i}': f'{path}:input' for i, path in enumerate(after)}
    return {**points, 'penultimate': 'head:input'}

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    h = jnp.reshape(x, (x.shape[0], -1))
    for layer in self.hidden:
      h = nnx.relu(layer(h))
    return self.head(h)
