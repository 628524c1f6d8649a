"""LoRA branches on nnx.Linear, nnx.Conv and nnx.Einsum layers of any NNX model, their residuals,
and merging them back.

A wrapped layer computes ``y = base(x) + (alpha / rank) * B(A(x))`` with B initialised to zero,
so a freshly wrapped model equals the original exactly. A and B are `nnx.LoRAParam` variables,
so ``nnx.split(model, nnx.LoRAParam, nnx.Param, nnx.BatchStat)`` separates them from the
frozen weights. For a conv, A is a conv with the base's kernel size, strides, padding and
dilations into `rank` channels and B a 1x1 conv back to the output channels (PEFT-style); for
an einsum, A maps the kernel's contracted axes to `rank` and B `rank` to its output axes.

Inside ``nnx.capture(model, nnx.Intermediate)`` each wrapper sows its branch output
``(alpha / rank) * B(A(x))`` (the residual the LoRA branch adds to the layer output) as
``nnx.Intermediate`` 'lora_residual', the latest call's value:

    logits, intermediates = nnx.capture(model, nnx.Intermediate)(x, train=False)
    residuals = lora_residuals(intermediates)  # {'layer1.0.conv1': array, ...}

(`state.ModelFns.capture` returns the same State beside the model's features.)

This works on a model merged inside `jax.jit`. Plain calls (eager or under `nnx.jit`) sow
nothing: Flax 0.12 deprecates sow outside capture, where it would store the value on the
model and leave a variable that makes ``nnx.split(model, nnx.Param, nnx.BatchStat)``
non-exhaustive after every call.

Methods hold models as `state.ModelFns` plus variables dicts; `add_lora_variables`,
`merge_lora_variables` and `base_variables` are the same operations on that form. Config strings
pick the wrapped layers (`lora_targets`, `TARGET_PRESETS`); `default_lora_settings` gives each
architecture's rank, alpha and targets.
"""

import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import features, state
from jaxunlearn.models import initializers

PathParts = tuple[str | int, ...]
Targets = Callable[[PathParts, nnx.Module], bool]

RESIDUAL_NAME = 'lora_residual'
BASE_OUTPUT_NAME = 'lora_base_output'
# The fold runs once per merge: full float32 precision costs nothing there, whereas a GPU's
# default (TF32) matmul rounds scale * A @ B well above float32 precision.
_FOLD_PRECISION = jax.lax.Precision.HIGHEST


def _as_lora_param(layer: nnx.Linear | nnx.Conv) -> nnx.Linear | nnx.Conv:
  layer.kernel = nnx.LoRAParam(layer.kernel[...])
  return layer


def _keep_latest(_, value):
  return value


def _sow_residual(layer: nnx.Module, residual: jax.Array, base_output: jax.Array) -> None:
  # nnx.capture marks every module it records with `__captures__`; outside it, sow would
  # store the value on the module (see the module docstring).
  if hasattr(layer, '__captures__'):
    layer.sow(nnx.Intermediate, RESIDUAL_NAME, residual, reduce_fn=_keep_latest)
    layer.sow(nnx.Intermediate, BASE_OUTPUT_NAME, base_output, reduce_fn=_keep_latest)


class LoRALinear(nnx.Module):
  """An nnx.Linear plus a low-rank branch: base(x) + scale * (x @ A) @ B."""

  def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, rngs: nnx.Rngs):
    self.base = base
    self.scale = alpha / rank
    self.lora_a = _as_lora_param(
      nnx.Linear(
        base.in_features,
        rank,
        use_bias=False,
        kernel_init=initializers.kaiming_uniform_sqrt5,
        param_dtype=base.param_dtype,
        dtype=base.dtype,
        rngs=rngs,
      )
    )
    self.lora_b = _as_lora_param(
      nnx.Linear(
        rank,
        base.out_features,
        use_bias=False,
        kernel_init=nnx.initializers.zeros,
        param_dtype=base.param_dtype,
        dtype=base.dtype,
        rngs=rngs,
      )
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    residual = self.scale * self.lora_b(self.lora_a(x))
    base_output = self.base(x)
    _sow_residual(self, residual, base_output)
    return base_output + residual

  def merged_kernel(self) -> jax.Array:
    """The base kernel with the branch folded in: W + scale * A @ B."""
    return self.base.kernel[...] + self.scale * jnp.matmul(
      self.lora_a.kernel[...], self.lora_b.kernel[...], precision=_FOLD_PRECISION
    )


class LoRAConv(nnx.Module):
  """An nnx.Conv plus a low-rank branch: base(x) + scale * B_1x1(A_conv(x))."""

  def __init__(self, base: nnx.Conv, *, rank: int, alpha: float, rngs: nnx.Rngs):
    if base.feature_group_count != 1 or base.mask is not None:
      raise ValueError(
        'add_lora supports convs with feature_group_count=1 and no mask, got '
        f'feature_group_count={base.feature_group_count}, '
        f'mask={"set" if base.mask is not None else None}.'
      )
    self.base = base
    self.scale = alpha / rank
    self.lora_a = _as_lora_param(
      nnx.Conv(
        base.in_features,
        rank,
        base.kernel_size,
        strides=base.strides,
        padding=base.padding,
        input_dilation=base.input_dilation,
        kernel_dilation=base.kernel_dilation,
        use_bias=False,
        kernel_init=initializers.kaiming_uniform_sqrt5,
        param_dtype=base.param_dtype,
        dtype=base.dtype,
        rngs=rngs,
      )
    )
    self.lora_b = _as_lora_param(
      nnx.Conv(
        rank,
        base.out_features,
        (1,) * len(base.kernel_size),
        use_bias=False,
        kernel_init=nnx.initializers.zeros,
        param_dtype=base.param_dtype,
        dtype=base.dtype,
        rngs=rngs,
      )
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    residual = self.scale * self.lora_b(self.lora_a(x))
    base_output = self.base(x)
    _sow_residual(self, residual, base_output)
    return base_output + residual

  def merged_kernel(self) -> jax.Array:
    """One kernel equal to base + A then 1x1 B: K + scale * sum_r A[..., i, r] B[r, o]."""
    b_matrix = self.lora_b.kernel[...].reshape(self.lora_b.kernel.shape[-2:])
    return self.base.kernel[...] + self.scale * jnp.einsum(
      '...ir,ro->...io', self.lora_a.kernel[...], b_matrix, precision=_FOLD_PRECISION
    )


def _einsum_parts(einsum_str: str) -> tuple[str, str, str, str, str]:
  """(input, kernel, output, contracted, kept) letters of 'input,kernel->output': the kernel's
  letters summed over (shared with the input only) and those kept in the output, in the kernel's
  order."""
  operands, output = einsum_str.split('->')
  lhs, kernel = operands.split(',')
  if '.' in einsum_str:
    raise ValueError(f'LoRA on nnx.Einsum needs an equation without ellipsis, got {einsum_str!r}.')
  contracted = ''.join(c for c in kernel if c in lhs and c not in output)
  kept = ''.join(c for c in kernel if c in output and c not in lhs)
  batch = ''.join(c for c in lhs if c not in contracted)
  if len(contracted) + len(kept) != len(kernel) or sorted(batch + kept) != sorted(output):
    raise ValueError(
      f'LoRA on nnx.Einsum needs each kernel axis either contracted with the input or kept in '
      f'the output, and the output made of the other input axes and the kept ones; got '
      f'{einsum_str!r}.'
    )
  return lhs, kernel, output, contracted, kept


class LoRAEinsum(nnx.Module):
  """An nnx.Einsum plus a low-rank branch: the kernel's contracted axes map to `rank` (A) and
  `rank` to its kept axes (B), so ``base(x) + scale * einsum(einsum(x, A), B)``."""

  def __init__(self, base: nnx.Einsum, *, rank: int, alpha: float, rngs: nnx.Rngs):
    lhs, kernel, output, contracted, kept = _einsum_parts(base.einsum_str)
    sizes = dict(zip(kernel, base.kernel_shape))
    rank_letter = next(c for c in 'zyxwvutsrqponmlkjihgfedcba' if c not in base.einsum_str)
    self.base = base
    self.scale = alpha / rank
    batch = ''.join(c for c in lhs if c not in contracted)
    self.a_str = f'{lhs},{contracted}{rank_letter}->{batch}{rank_letter}'
    self.b_str = f'{batch}{rank_letter},{rank_letter}{kept}->{output}'
    self.fold_str = f'{contracted}{rank_letter},{rank_letter}{kept}->{kernel}'
    a_shape = tuple(sizes[c] for c in contracted) + (rank,)
    fan_in = int(np.prod(a_shape[:-1]))
    self.lora_a = nnx.LoRAParam(
      initializers.kaiming_uniform_sqrt5(rngs.params(), (fan_in, rank), base.param_dtype).reshape(
        a_shape
      )
    )
    self.lora_b = nnx.LoRAParam(
      jnp.zeros((rank,) + tuple(sizes[c] for c in kept), base.param_dtype)
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.base.dtype or x.dtype
    a, b = self.lora_a[...].astype(dtype), self.lora_b[...].astype(dtype)
    residual = self.scale * jnp.einsum(self.b_str, jnp.einsum(self.a_str, x.astype(dtype), a), b)
    base_output = self.base(x)
    _sow_residual(self, residual, base_output)
    return base_output + residual

  def merged_kernel(self) -> jax.Array:
    """The base kernel with the branch folded in: K + scale * A B over the rank axis."""
    return self.base.kernel[...] + self.scale * jnp.einsum(
      self.fold_str, self.lora_a[...], self.lora_b[...], precision=_FOLD_PRECISION
    )


LORA_LAYERS = (LoRALinear, LoRAConv, LoRAEinsum)
BASE_LAYERS = (nnx.Linear, nnx.Conv, nnx.Einsum)


def _wrappers(model: nnx.Module) -> list[PathParts]:
  return [path for path, node in nnx.iter_graph(model) if isinstance(node, LORA_LAYERS)]


def add_lora(
  model: nnx.Module, *, rank: int, alpha: float, targets: Targets | None = None, rngs: nnx.Rngs
) -> nnx.Module:
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
    if isinstance(node, BASE_LAYERS) and (targets is None or targets(path, node)):
      layer_type = {nnx.Linear: LoRALinear, nnx.Conv: LoRAConv, nnx.Einsum: LoRAEinsum}
      return layer_type[type(node)](node, rank=rank, alpha=alpha, rngs=rngs)
    return node

  wrapped = nnx.recursive_map(wrap, nnx.clone(model))
  if not _wrappers(wrapped):
    raise ValueError('targets selected no nnx.Linear, nnx.Conv or nnx.Einsum layer of the model.')
  return wrapped


def merge_lora(model: nnx.Module) -> nnx.Module:
  """Returns a copy of `model` with every LoRA branch folded into its base layer's kernel.

  The result has the original architecture (plain nnx.Linear / nnx.Conv layers, only Param and
  BatchStat variables) and computes the same function as the LoRA model.
  """
  return _unwrap(nnx.clone(model), _fold)


def _fold(layer: LoRALinear | LoRAConv | LoRAEinsum) -> nnx.Module:
  base = layer.base
  base.kernel = nnx.Param(layer.merged_kernel())
  return base


def _unwrap(model: nnx.Module, replace: Callable) -> nnx.Module:
  """Replaces every LoRA layer of `model` (in place) by ``replace(layer)``, a plain layer."""
  return nnx.recursive_map(
    lambda _, node: replace(node) if isinstance(node, LORA_LAYERS) else node, model
  )


def lora_residuals(intermediates: nnx.State, name: str = RESIDUAL_NAME) -> dict[str, jax.Array]:
  """Maps each LoRA layer's dotted path (e.g. 'layer1.0.conv1') to its sown residual (or, with
  ``name=BASE_OUTPUT_NAME``, to its base layer's output).

  `intermediates` is the State from ``nnx.capture(model, nnx.Intermediate)``; other entries are
  ignored. A model that is itself one wrapped layer has the path ''.
  """
  residuals = {}
  for path, variable in nnx.to_flat_state(intermediates):
    if path and path[-1] == name:
      residuals[_dotted(path[:-1])] = variable[...]
  return residuals


# ------------------------------------------------------------------ functional form (ModelFns)


def add_lora_variables(
  fns: state.ModelFns,
  variables: dict,
  *,
  rank: int,
  alpha: float,
  targets: Targets | None = None,
  rngs: nnx.Rngs,
) -> tuple[state.ModelFns, dict]:
  """`add_lora` on a functionalized model.

  Args:
    fns, variables: the plain model, as from `state.functionalize`.
    rank, alpha, targets, rngs: as for `add_lora`.

  Returns:
    ``(lora_fns, lora_variables)``: the LoRA model's `ModelFns` (its `param_types` mark A and B
    as `nnx.LoRAParam`) and variables; the base weights sit unchanged under '<layer>.base', and
    the batch statistics are `variables`' own.
  """
  return state.functionalize(
    add_lora(fns.module(variables), rank=rank, alpha=alpha, targets=targets, rngs=rngs),
    fns.feature_points,
  )


def merge_lora_variables(lora_fns: state.ModelFns, lora_variables: dict) -> dict:
  """The plain model's ``{'params', 'batch_stats'}`` with every branch folded into its kernel.

  The result has the tree structure, shapes and dtypes of the original model's variables, so
  it loads with the original's `ModelFns` and checkpoints; batch statistics pass through
  unchanged. Pure, and traceable under `jax.jit`.
  """
  return _variables(merge_lora(lora_fns.module(lora_variables)))


def base_variables(lora_fns: state.ModelFns, lora_variables: dict) -> dict:
  """The plain model's variables with every branch dropped: the frozen base, i.e. the teacher.

  Under `jax.jit` this only regroups the base arrays (no copy), so a step can apply the teacher
  (with the original's `ModelFns`) without the method storing its weights a second time.
  """
  return _variables(_unwrap(lora_fns.module(lora_variables), lambda layer: layer.base))


def _variables(model: nnx.Module) -> dict:
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return {'params': nnx.to_pure_dict(params), 'batch_stats': nnx.to_pure_dict(batch_stats)}


# ------------------------------------------------------------------ targets from config strings

# Named layer selections (regular expressions over dotted layer paths, see `lora_targets`).
TARGET_PRESETS = {
  # Every nnx.Linear and nnx.Conv, the head and the input layer included.
  'all': r'.*',
  # ViT: the attention query and value projections (LoRA's and PEFT's usual choice).
  'attention_qv': r'blocks\.\d+\.attention\.(query|value)',
  # ViT: all four attention projections.
  'attention': r'blocks\.\d+\.attention\.(query|key|value|out)',
  # ViT: every Linear of every encoder block (attention and MLP).
  'attention_mlp': r'blocks\.\d+\.(attention\.(query|key|value|out)|mlp_in|mlp_out)',
}


class LoRASettings(NamedTuple):
  """Branch rank, scale numerator and layer selection (a `TARGET_PRESETS` name or a regex)."""

  rank: int
  alpha: float
  targets: str


# Per `models.MODELS` name: (rank, targets). The branches go on the intermediate layers, as in
# RFA-LoRA, and on the classifier head. The head's branch is what lets the output target on D_f
# (the teacher's mean D_r output) be met at the output itself: without it only the features can
# move the logits (FINDINGS.md, "RFA-LoRA's output target"). The intermediate branches still
# carry the feature alignment, so D_f's features move too. The input layer (ResNet's stem, ViT's patch embedding) stays frozen: its
# filters are generic low-level ones, and with 27 (3x3x3) or 48 (4x4x3) inputs a rank-16 branch
# would not be low-rank there. ResNet's 1x1 shortcut convs stay frozen: the 3x3 convs carry
# each block's learned function. The small CNN has only three intermediate layers, so each of
# them gets a branch and every feature it returns can move.
_HEAD = r'|head'
_DEFAULTS = {
  'mlp': (16, r'hidden\.\d+' + _HEAD),
  # Rank 8: the small CNN's convs have 32 and 64 output channels (the first only 9 inputs on
  # MNIST), so rank 16 would be half the first conv's width.
  'cnn': (8, r'convs\.\d+|dense' + _HEAD),
  'resnet18': (16, r'layer\d\.\d+\.conv[12]' + _HEAD),
  'resnet34': (16, r'layer\d\.\d+\.conv[12]' + _HEAD),
  'resnet50': (16, r'layer\d\.\d+\.conv[123]' + _HEAD),
  'vit': (16, TARGET_PRESETS['attention_qv'] + _HEAD),
  'vit_tiny': (16, TARGET_PRESETS['attention_qv'] + _HEAD),
  'vit_small': (16, TARGET_PRESETS['attention_qv'] + _HEAD),
}


def default_lora_settings(
  model_name: str, model: nnx.Module | None = None, input_shape=None
) -> LoRASettings:
  """The default rank, alpha and targets of a model.

  A zoo model (`model_name` in `models.MODELS`) has its own (`_DEFAULTS`). Any other model gets
  rank 16 on every nnx.Linear, nnx.Conv and nnx.Einsum except the first one it calls (its input
  layer, kept frozen for the reason the zoo's defaults give), found by tracing one call of
  `model` on inputs of `input_shape`.

  alpha = rank: a scale alpha / rank = 1 keeps the branch's size at a given B independent of
  the rank, as PEFT's common default, so a learning rate tuned at one rank carries over.
  """
  if model_name in _DEFAULTS:
    rank, targets = _DEFAULTS[model_name]
  else:
    if model is None or input_shape is None:
      raise ValueError(f'{model_name!r} is not a zoo model: give the model and its input shape.')
    calls, _ = features.layer_calls(model, input_shape)
    paths = list(dict.fromkeys(_dotted(path) for path, _ in calls))
    rank, targets = 16, '|'.join(re.escape(p) for p in paths[1:] or paths)
  return LoRASettings(rank=rank, alpha=float(rank), targets=targets)


def lora_layer_paths(model: nnx.Module) -> list[str]:
  """Dotted paths (e.g. 'layer1.0.conv1') of every nnx.Linear, nnx.Conv and nnx.Einsum of
  `model`."""
  return [_dotted(path) for path, node in nnx.iter_graph(model) if isinstance(node, BASE_LAYERS)]


def lora_targets(spec: str, model: nnx.Module, *, model_name: str, config_key: str) -> Targets:
  """Turns a config string into `add_lora`'s `targets` predicate, checked against `model`.

  Args:
    spec: a `TARGET_PRESETS` name, else a regular expression that must match a layer's whole
      dotted path (`re.fullmatch`: 'dense' selects 'dense', not 'dense_2'; 'layer1.0.conv1' and
      'blocks.3.attention.query' are such paths, listed by `lora_layer_paths`).
    model: the model to be wrapped, without LoRA branches.
    model_name: its `models.MODELS` name, for the error message.
    config_key: the config entry `spec` came from (e.g. 'method.rfa_lora.targets'), for the
      error message.

  Returns:
    ``targets(path, layer) -> bool``, true for the layers `spec` selects.

  Raises:
    ValueError: `spec` is not a valid regular expression, or selects no layer of `model`.
  """
  try:
    pattern = re.compile(TARGET_PRESETS.get(spec, spec))
  except re.error as error:
    raise ValueError(
      f'--config.{config_key}={spec!r}: neither a preset {sorted(TARGET_PRESETS)} '
      f'nor a valid regular expression ({error}).'
    ) from None
  layers = lora_layer_paths(model)
  if not any(pattern.fullmatch(path) for path in layers):
    raise ValueError(
      f'--config.{config_key}={spec!r}: selects no layer of model {model_name}; '
      f'layers are: {", ".join(layers)}.'
    )
  return lambda path, _: pattern.fullmatch(_dotted(path)) is not None


def _dotted(path: PathParts) -> str:
  return '.'.join(str(part) for part in path)
