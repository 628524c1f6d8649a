"""Model zoo: registry, factory and the model classes.

Every model is called as ``model(x, *, train=False, return_features=False, replace_features=None)``
on float32 images [B, H, W, C] and returns logits [B, num_classes], or ``(logits, features)`` where
`features` maps each block's name to its output, shallow to deep, ending with 'penultimate' (the
head's input). `replace_features` runs the rest of the network from given feature values
(`jaxunlearn.models.features`).
`load_pretrained` builds a zoo model holding a torchvision ResNet's or a timm ViT's weights
(`jaxunlearn.models.pretrained`).
`features` is a `collections.OrderedDict`: JAX keeps its order through `jax.jit` and other
transformations, whereas it returns a plain dict's keys sorted ('stem' would follow 'penultimate').
Models hold only `nnx.Param` and `nnx.BatchStat` variables (no RNG state, no dropout), so
``nnx.split(model, nnx.Param, nnx.BatchStat)`` is exhaustive.
"""

import inspect
import numbers
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models.cnn import CNN
from jaxunlearn.models.mlp import MLP
from jaxunlearn.models.pretrained import PRETRAINED, load_pretrained
from jaxunlearn.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from jaxunlearn.models.vit import ViT, vit_small, vit_tiny

MODELS: dict[str, Callable[..., nnx.Module]] = {
  'mlp': MLP,
  'cnn': CNN,
  'resnet18': resnet18,
  'resnet34': resnet34,
  'resnet50': resnet50,
  'vit': ViT,
  'vit_tiny': vit_tiny,
  'vit_small': vit_small,
}

_COMMON_ARGS = ('num_classes', 'input_shape', 'rngs')
_DTYPED_LAYERS = (nnx.Conv, nnx.Linear, nnx.BatchNorm, nnx.LayerNorm)  # every layer of the zoo


def set_compute_dtype(model: nnx.Module, compute_dtype: str) -> nnx.Module:
  """Flax mixed precision: every layer computes in `compute_dtype` (a name from
  `jaxunlearn.config.COMPUTE_DTYPES`); parameters stay float32, and BatchNorm and LayerNorm
  compute their statistics in float32 whatever the layer dtype. `state.ModelFns.apply` returns
  float32 logits and features, so losses and scores are float32. Returns `model`, changed in
  place."""
  for _, module in model.iter_modules():
    if isinstance(module, _DTYPED_LAYERS):
      module.dtype = jnp.dtype(compute_dtype)
  return model


def model_kwargs(name: str) -> tuple[str, ...]:
  """The model-specific keyword arguments `create_model` accepts for model `name`."""
  _check_name(name)
  constructor = MODELS[name]
  # nnx.Module's metaclass hides a class's __init__ signature.
  function = constructor.__init__ if isinstance(constructor, type) else constructor
  signature = inspect.signature(function)
  return tuple(p for p in signature.parameters if p not in ('self',) + _COMMON_ARGS)


def create_model(
  name: str, *, num_classes: int, input_shape: tuple[int, int, int], rngs: nnx.Rngs, **kwargs
) -> nnx.Module:
  """Builds model `name` from `MODELS` for inputs of shape `input_shape` (H, W, C).

  Raises ValueError for an unknown name, unknown keyword arguments, a non-positive
  `num_classes` or an `input_shape` that is not three positive ints.
  """
  allowed = model_kwargs(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
      f'Unknown keyword arguments {unknown} for model {name!r}; allowed: {list(allowed)}.'
    )
  if not _is_positive_int(num_classes):
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  shape = tuple(input_shape)
  if len(shape) != 3 or not all(_is_positive_int(d) for d in shape):
    raise ValueError(f'input_shape must be three positive ints (H, W, C), got {input_shape!r}.')
  return MODELS[name](
    num_classes=int(num_classes), input_shape=tuple(int(d) for d in shape), rngs=rngs, **kwargs
  )


def _is_positive_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _check_name(name: str) -> None:
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r} (--config.model / model); allowed: {sorted(MODELS)}.')


__all__ = [
  'MODELS',
  'create_model',
  'model_kwargs',
  'PRETRAINED',
  'load_pretrained',
  'MLP',
  'CNN',
  'ResNet',
  'BasicBlock',
  'Bottleneck',
  'resnet18',
  'resnet34',
  'resnet50',
  'ViT',
  'vit_tiny',
  'vit_small',
]
