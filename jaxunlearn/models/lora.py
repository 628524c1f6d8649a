"""LoRA branches on nnx.Linear and nnx.Conv layers, their residuals, and merging them back.

A wrapped layer computes ``y = base(x) + (alpha / rank) * B(A(x))`` with B initialised to zero,
so a freshly wrapped model equals the original exactly. A and B are `nnx.LoRAParam` variables,
so ``nnx.split(model, nnx.LoRAParam, nnx.Param, nnx.BatchStat)`` separates them from the
frozen weights. For a conv, A is a conv with the base's kernel size, strides, padding and
dilations into `rank` channels and B a 1x1 conv back to the output channels (PEFT-style).

Inside ``nnx.capture(model, nnx.Intermediate)`` each wrapper sows its branch output
``(alpha / rank) * B(A(x))`` (the residual the LoRA branch adds to the layer output) as
``nnx.Intermediate`` 'lora_residual', the latest call's value:

    (logits, features), intermediates = nnx.capture(model, nnx.Intermediate)(
        x, return_features=True)
    residuals = lora_residuals(intermediates)  # {'layer1.0.conv1': array, ...}

This works on a model merged inside `jax.jit`. Plain calls (eager or under `nnx.jit`) sow
nothing: Flax 0.12 deprecates sow outside capture, where it would store the value on the
model and leave a variable that makes ``nnx.split(model, nnx.Param, nnx.BatchStat)``
non-exhaustive after every call.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import initializers

PathParts = tuple[str | int, ...]
Targets = Callable[[PathParts, nnx.Module], bool]

RESIDUAL_NAME = 'lora_residual'


def _as_lora_param(layer: nnx.Linear | nnx.Conv) -> nnx.Linear | nnx.Conv:
  layer.kernel = nnx.LoRAParam(layer.kernel[...])
  return layer


def _keep_latest(_, value):
  return value


def _sow_residual(layer: nnx.Module, residual: jax.Array) -> None:
  # nnx.capture marks every module it records with `__captures__`; outside it, sow would
  # store the value on the module (see the module docstring).
  if hasattr(layer, '__captures__'):
    layer.sow(nnx.Intermediate, RESIDUAL_NAME, residual, reduce_fn=_keep_latest)


class LoRALinear(nnx.Module):
  """An nnx.Linear plus a low-rank branch: base(x) + scale * (x @ A) @ B."""

  def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, rngs: nnx.Rngs):
    self.base = base
    self.scale = alpha / rank
    self.lora_a = _as_lora_param(nnx.Linear(
        base.in_features, rank, use_bias=False, kernel_init=initializers.kaiming_uniform_sqrt5,
        param_dtype=base.param_dtype, dtype=base.dtype, rngs=rngs))
    self.lora_b = _as_lora_param(nnx.Linear(
        rank, base.out_features, use_bias=False, kernel_init=nnx.initializers.zeros,
        param_dtype=base.param_dtype, dtype=base.dtype, rngs=rngs))

  def __call__(self, x: jax.Array) -> jax.Array:
    residual = self.scale * self.lora_b(self.lora_a(x))
    _sow_residual(self, residual)
    return self.base(x) + residual

  def merged_kernel(self) -> jax.Array:
    """The base kernel with the branch folded in: W + scale * A @ B."""
    return self.base.kernel[...] + self.scale * self.lora_a.kernel[...] @ self.lora_b.kernel[...]


class LoRAConv(nnx.Module):
  """An nnx.Conv plus a low-rank branch: base(x) + scale * B_1x1(A_conv(x))."""

  def __init__(self, base: nnx.Conv, *, rank: int, alpha: float, rngs: nnx.Rngs):
    if base.feature_group_count != 1 or base.mask is not None:
      raise ValueError('add_lora supports convs with feature_group_count=1 and no mask, got '
                       f'feature_group_count={base.feature_group_count}, '
                       f'mask={"set" if base.mask is not None else None}.')
    self.base = base
    self.scale = alpha / rank
    self.lora_a = _as_lora_param(nnx.Conv(
        base.in_features, rank, base.kernel_size, strides=base.strides, padding=base.padding,
        input_dilation=base.input_dilation, kernel_dilation=base.kernel_dilation,
        use_bias=False, kernel_init=initializers.kaiming_uniform_sqrt5,
        param_dtype=base.param_dtype, dtype=base.dtype, rngs=rngs))
    self.lora_b = _as_lora_param(nnx.Conv(
        rank, base.out_features, (1,) * len(base.kernel_size), use_bias=False,
        kernel_init=nnx.initializers.zeros, param_dtype=base.param_dtype, dtype=base.dtype,
        rngs=rngs))

  def __call__(self, x: jax.Array) -> jax.Array:
    residual = self.scale * self.lora_b(self.lora_a(x))
    _sow_residual(self, residual)
    return self.base(x) + residual

  def merged_kernel(self) -> jax.Array:
    """One kernel equal to base + A then 1x1 B: K + scale * sum_r A[..., i, r] B[r, o]."""
    b_matrix = self.lora_b.kernel[...].reshape(self.lora_b.kernel.shape[-2:])
    return self.base.kernel[...] + self.scale * jnp.einsum(
        '...ir,ro->...io', self.lora_a.kernel[...], b_matrix)


LORA_LAYERS = (LoRALinear, LoRAConv)


def _wrappers(model: nnx.Module) -> list[PathParts]:
  return [path for path, node in nnx.iter_graph(model) if isinstance(node, LORA_LAYERS)]


def add_lora(model: nnx.Module, *, rank: int, alpha: float, targets: Targets | None = None,
             rngs: nnx.Rngs) -> nnx.Module:
  """Returns a copy of `model` with the selected nnx.Linear / nnx.Conv layers LoRA-wrapped.

  Args:
    model: a model without LoRA branches (it is not modified; the copy shares no variables).
    rank: the branch rank r >= 1.
    alpha: the branch scale numerator; the branch output is multiplied by alpha / rank.
    targets: ``targets(path, layer) -> bool`` called for every nnx.Linear and nnx.Conv with its
      path in the model (e.g. ``('layer1', 0, 'conv1')`` or ``('blocks', 3, 'attention',
      'query')``); None wraps every Linear and Conv, the head included.
    rngs: RNG streams for A's init.
  """
  if not isinstance(rank, int) or rank < 1:
    raise ValueError(f'rank must be a positive int, got {rank!r}.')
  if not alpha > 0:
    raise ValueError(f'alpha must be > 0, got {alpha!r}.')
  existing = _wrappers(model)
  if existing:
    raise ValueError(f'model already has LoRA branches at {existing}; merge_lora it first.')

  def wrap(path: PathParts, node):
    if isinstance(node, (nnx.Linear, nnx.Conv)) and (targets is None or targets(path, node)):
      layer_type = LoRALinear if isinstance(node, nnx.Linear) else LoRAConv
      return layer_type(node, rank=rank, alpha=alpha, rngs=rngs)
    return node

  wrapped = nnx.recursive_map(wrap, nnx.clone(model))
  if not _wrappers(wrapped):
    raise ValueError('targets selected no nnx.Linear or nnx.Conv layer of the model.')
  return wrapped


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Returns a copy of `model` with every LoRA branch folded into its base layer's kernel.

  The result has the original architecture (plain nnx.Linear / nnx.Conv layers, only Param and
  BatchStat variables) and computes the same function as the LoRA model.
  """

  def fold(_, node):
    if isinstance(node, LORA_LAYERS):
      base = node.base
      base.kernel = nnx.Param(node.merged_kernel())
      return base
    return node

  return nnx.recursive_map(fold, nnx.clone(model))


def lora_residuals(intermediates: nnx.State) -> dict[str, jax.Array]:
  """Maps each LoRA layer's dotted path (e.g. 'layer1.0.conv1') to its sown residual.

  `intermediates` is the State from ``nnx.capture(model, nnx.Intermediate)``; entries other
  than 'lora_residual' are ignored. A model that is itself one wrapped layer has the path ''.
  """
  residuals = {}
  for path, variable in nnx.to_flat_state(intermediates):
    if path and path[-1] == RESIDUAL_NAME:
      residuals['.'.join(str(part) for part in path[:-1])] = variable[...]
  return residuals
