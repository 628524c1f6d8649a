"""Model zoo and the models of anywhere else: registry, factory and the contract every model keeps.

A model is any `nnx.Module` called as ``model(images, train=...) -> logits`` on float32 images
[B, H, W, C]: a zoo name (`MODELS`) or an import path 'package.module:Name' of a class or factory
(`resolve`), built with the keyword arguments `num_classes` and `rngs` (an `nnx.Rngs`), plus
`input_shape` (H, W, C) when its signature has it and the config's model keyword arguments.
`check_model` checks the contract on an abstract batch before any work. Features are captured
from any model without its help (`jaxunlearn.features`); the zoo's models name theirs with
``feature_layers()``. Models hold only `nnx.Param` and `nnx.BatchStat` variables (no RNG state,
no dropout), so ``nnx.split(model, nnx.Param, nnx.BatchStat)`` is exhaustive.
`load_pretrained` builds a zoo model holding a torchvision ResNet's or a timm ViT's weights
(`jaxunlearn.models.pretrained`).
"""

import importlib
import inspect
import numbers
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.config import ConfigError
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
  for _, module in nnx.iter_modules(model):
    if isinstance(module, _DTYPED_LAYERS):
      module.dtype = jnp.dtype(compute_dtype)
  return model


def resolve(model: str | Callable, flag: str = '--config.model') -> Callable[..., nnx.Module]:
  """The constructor of `model`: a zoo name, an import path 'package.module:Name' (a class or
  factory; 'Name' may be dotted), or the constructor itself.

  Raises:
    ConfigError: an unknown zoo name, a module that does not import, a name it lacks, or an
      object that is not callable.
  """
  if callable(model):
    return model
  if model in MODELS:
    return MODELS[model]
  if ':' not in model:
    raise ConfigError(
      f'{flag}={model!r}: not a zoo model ({", ".join(sorted(MODELS))}) nor an import path '
      "'package.module:Name'."
    )
  module_name, _, attribute = model.partition(':')
  try:
    target = importlib.import_module(module_name)
  except Exception as error:  # noqa: BLE001 (any failure to import is the user's to see)
    raise ConfigError(
      f'{flag}={model!r}: module {module_name!r} does not import '
      f'({type(error).__name__}: {error}); is it on PYTHONPATH?'
    ) from None
  for part in attribute.split('.'):
    if not hasattr(target, part):
      raise ConfigError(f'{flag}={model!r}: {module_name} has no {attribute!r}.')
    target = getattr(target, part)
  if not callable(target):
    raise ConfigError(f'{flag}={model!r}: {attribute} is a {type(target).__name__}, not callable.')
  return target


def model_name(model: str | Callable) -> str:
  """How a model is named in records: its zoo name or import path, or a constructor's
  'module:qualname'."""
  if isinstance(model, str):
    return model
  return f'{model.__module__}:{model.__qualname__}'


def model_tag(model: str | Callable) -> str:
  """A directory-safe form of `model_name` ('mypkg.net:Net' -> 'mypkg.net-Net')."""
  return re.sub(r'[^A-Za-z0-9._]+', '-', model_name(model)).strip('-')


def _signature(constructor: Callable) -> inspect.Signature:
  # nnx.Module's metaclass hides a class's __init__ signature.
  return inspect.signature(constructor.__init__ if isinstance(constructor, type) else constructor)


def model_kwargs(model: str | Callable) -> tuple[str, ...] | None:
  """The model-specific keyword arguments `create_model` accepts for `model` (None: any, for a
  constructor that takes ``**kwargs``)."""
  parameters = _signature(resolve(model)).parameters
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return None
  return tuple(p for p in parameters if p not in ('self',) + _COMMON_ARGS)


def create_model(
  model: str | Callable,
  *,
  num_classes: int,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  **kwargs,
) -> nnx.Module:
  """Builds `model` (see `resolve`) for inputs of shape `input_shape` (H, W, C).

  Raises:
    ConfigError: an unknown model, unknown keyword arguments, a non-positive `num_classes` or an
      `input_shape` that is not three positive ints.
  """
  constructor = resolve(model)
  allowed = model_kwargs(constructor)
  unknown = sorted(set(kwargs) - set(allowed)) if allowed is not None else []
  if unknown:
    raise ConfigError(
      f'--config.model_kwargs: unknown keyword arguments {unknown} for model '
      f'{model_name(model)!r}; allowed: {list(allowed)}.'
    )
  if not _is_positive_int(num_classes):
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  shape = tuple(input_shape)
  if len(shape) != 3 or not all(_is_positive_int(d) for d in shape):
    raise ValueError(f'input_shape must be three positive ints (H, W, C), got {input_shape!r}.')
  parameters = _signature(constructor).parameters
  if 'input_shape' in parameters or allowed is None:
    kwargs['input_shape'] = tuple(int(d) for d in shape)
  return constructor(num_classes=int(num_classes), rngs=rngs, **kwargs)


def check_model(
  model: nnx.Module, num_classes: int, input_shape: tuple, name: str, flag: str = '--config.model'
) -> None:
  """Checks the contract ``model(images, train=...) -> logits [B, num_classes]`` on an abstract
  batch of 2 (nothing is computed), in training and in evaluation mode.

  Raises:
    ConfigError: one line saying what was expected and what the model did.
  """
  graphdef, state = nnx.split(model)
  expected = (
    f'model(images [B, {", ".join(map(str, input_shape))}], train=...) -> logits [B, {num_classes}]'
  )
  for train in (False, True):

    def forward(state, train=train):
      return nnx.merge(graphdef, state)(jnp.zeros((2, *input_shape), jnp.float32), train=train)

    try:
      out = jax.eval_shape(forward, state)
    except Exception as error:  # noqa: BLE001 (the user's model may fail in any way)
      message = ' '.join(str(error).split())[:300]
      raise ConfigError(
        f'{flag}={name!r}: expected {expected}; with train={train} it raised '
        f'{type(error).__name__}: {message}'
      ) from None
    shape = getattr(out, 'shape', None)
    if shape != (2, num_classes) or not jnp.issubdtype(out.dtype, jnp.floating):
      found = f'{type(out).__name__} {shape} {getattr(out, "dtype", "")}'.strip()
      raise ConfigError(
        f'{flag}={name!r}: expected {expected}; with train={train} and B=2 it returned {found}.'
      )


def _is_positive_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


__all__ = [
  'MODELS',
  'check_model',
  'create_model',
  'model_kwargs',
  'model_name',
  'model_tag',
  'resolve',
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
