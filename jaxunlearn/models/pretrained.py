"""Public PyTorch backbones (torchvision ResNets, timm ViTs) as zoo models holding their weights.

``load_pretrained(path, 'torchvision:resnet50')`` reads a state dict (`.safetensors` through
`safetensors.numpy`, no torch needed; `.pth`/`.pt` through torch) and returns the zoo model that
restates the architecture (`PRETRAINED`) with every tensor copied in. Each zoo variable maps
mechanically onto one torch key: its dotted path with the layers renamed (`Source.renames`) and
the leaf renamed ('kernel' and 'scale' -> 'weight', 'mean' -> 'running_mean', 'var' ->
'running_var'), converting the layouts on the way:

* conv kernels: torch OIHW -> Flax HWIO; Linear weights: torch [out, in] -> Flax [in, out];
* timm's fused attention projection 'attn.qkv' ([3 * width, width], rows query, key, value) is
  split into the zoo's 'query', 'key' and 'value' Linear layers. Kept separate, they let LoRA
  target the query and value projections by name (`lora.TARGET_PRESETS['attention_qv']`), as on
  every zoo ViT, and the split is exact: each is a block of rows of the fused weight.
* BatchNorm's 'num_batches_tracked' counters are accepted and ignored (eval mode reads only the
  running mean and variance).

Every key of the file is checked against the model: a missing or unexpected key or a shape
mismatch raises one ValueError naming the key, the expected and the found shape.
"""

from __future__ import annotations

import importlib.util
import numbers
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from jaxunlearn import models as zoo

# The public models' input size and class count (ImageNet-1k).
PUBLIC_INPUT_SHAPE = (224, 224, 3)
PUBLIC_NUM_CLASSES = 1000
_SUFFIXES = ('.safetensors', '.pth', '.pt')
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'mean': 'running_mean', 'var': 'running_var'}
# The row blocks of a fused torch tensor, in order (timm's attn.qkv).
_FUSED_ORDER = {'query': 0, 'key': 1, 'value': 2}
_BATCH_COUNTER = 'num_batches_tracked'


class Source(NamedTuple):
  """A public architecture: the zoo model that restates it and the torch names of its layers.

  zoo_name: the `jaxunlearn.models.MODELS` name.
  zoo_kwargs: its keyword arguments for the full-size public model.
  renames: zoo path segment -> the torch key's segment(s); segments not listed keep their name.
  """

  zoo_name: str
  zoo_kwargs: Mapping[str, Any]
  renames: Mapping[str, str]


_TORCHVISION_RESNET = {
  'stem_conv': 'conv1',
  'stem_bn': 'bn1',
  'shortcut_conv': 'downsample.0',
  'shortcut_bn': 'downsample.1',
  'head': 'fc',
}
_TIMM_VIT = {
  'patch_embed': 'patch_embed.proj',
  'position_embedding': 'pos_embed',
  'attention_norm': 'norm1',
  'attention': 'attn',
  'query': 'qkv',
  'key': 'qkv',
  'value': 'qkv',
  'out': 'proj',
  'mlp_norm': 'norm2',
  'mlp_in': 'mlp.fc1',
  'mlp_out': 'mlp.fc2',
  'final_norm': 'norm',
}


def _timm_vit(width: int, num_heads: int) -> Source:
  sizes = dict(patch_size=16, width=width, depth=12, num_heads=num_heads, mlp_dim=4 * width)
  return Source('vit', dict(sizes, pooling='cls', gelu_approximate=False), _TIMM_VIT)


PRETRAINED: dict[str, Source] = {
  'torchvision:resnet18': Source('resnet18', {'stem': 'imagenet'}, _TORCHVISION_RESNET),
  'torchvision:resnet34': Source('resnet34', {'stem': 'imagenet'}, _TORCHVISION_RESNET),
  'torchvision:resnet50': Source('resnet50', {'stem': 'imagenet'}, _TORCHVISION_RESNET),
  'timm:vit_tiny_patch16_224': _timm_vit(192, 3),
  'timm:vit_small_patch16_224': _timm_vit(384, 6),
  'timm:vit_base_patch16_224': _timm_vit(768, 12),
}


class _Tensor(NamedTuple):
  """One torch tensor: its shape, and the zoo variables it fills with the torch shape of each
  (several when fused: stacked along the first axis in this order)."""

  shape: tuple[int, ...]
  targets: tuple[tuple[str, tuple[int, ...]], ...]


def load_pretrained(
  path: str,
  model: str,
  *,
  num_classes: int | None = None,
  rngs: nnx.Rngs | None = None,
  input_shape: tuple[int, int, int] = PUBLIC_INPUT_SHAPE,
  **kwargs,
) -> nnx.Module:
  """The zoo model of architecture `model` holding the weights of the state dict at `path`.

  Args:
    path: a `.safetensors` file, or a `.pth`/`.pt` state dict (read only where torch imports).
    model: the source's architecture name, a key of `PRETRAINED` (e.g. 'torchvision:resnet18',
      'timm:vit_base_patch16_224').
    num_classes: None keeps the file's classifier (its class count read from the file); a count
      replaces it with a freshly initialised head of that many classes (the zoo model's
      `head_layer`, drawn from `rngs`), leaving every other weight as loaded.
    rngs: draws the replaced head; default ``nnx.Rngs(0)``.
    input_shape: the images' (H, W, C); a ViT's position embedding fixes its H and W (patch
      size times the patch grid: (224, 224, 3) for the public models).
    **kwargs: zoo keyword arguments replacing the architecture's (`PRETRAINED[model].zoo_kwargs`),
      for smaller variants with the same layout: ``width=`` for a ResNet (the first stage's
      channels); ``patch_size=``, ``width=``, ``depth=``, ``num_heads=``, ``mlp_dim=`` for a ViT.

  Returns:
    The model, called as every zoo model: ``model(images_nhwc, train=False) -> logits``.

  Raises:
    ValueError: unknown `model`, a bad `num_classes`, an unreadable file type, or a file whose
      keys or shapes differ from the model's (one line naming the key, the expected and the
      found shape).
    FileNotFoundError: no file at `path`.
    ImportError: a `.pth`/`.pt` file without torch.
  """
  if model not in PRETRAINED:
    raise ValueError(f'Unknown pretrained architecture {model!r}; allowed: {sorted(PRETRAINED)}.')
  if num_classes is not None and (
    isinstance(num_classes, bool)
    or not isinstance(num_classes, numbers.Integral)
    or num_classes < 1
  ):
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  source = PRETRAINED[model]
  tensors = read_state_dict(path)
  # Built abstractly (shapes only, no random draws): every variable is then set from the file.
  result = nnx.eval_shape(
    lambda: zoo.create_model(
      source.zoo_name,
      num_classes=_file_num_classes(tensors, source.renames),
      input_shape=input_shape,
      rngs=nnx.Rngs(0),
      **{**source.zoo_kwargs, **kwargs},
    )
  )
  layout, optional = torch_layout(result, source)
  _check(tensors, layout, optional, f'{path} as {model}')
  variables = _variables(result)
  for key, tensor in layout.items():
    split_at = np.cumsum([shape[0] for _, shape in tensor.targets])[:-1]
    for (target, _), value in zip(tensor.targets, np.split(tensors[key], split_at)):
      variable = variables[target]
      variable.set_value(jnp.asarray(_to_zoo(target, value), variable.get_value().dtype))
  if num_classes is not None:
    result.head = type(result).head_layer(
      result.head.in_features, int(num_classes), rngs=rngs or nnx.Rngs(0)
    )
  return result


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `.safetensors` file or a `.pth`/`.pt` state dict, as NumPy arrays."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file.')
  suffix = os.path.splitext(path)[1]
  if suffix == '.safetensors':
    return safetensors.numpy.load_file(path)
  if suffix not in _SUFFIXES:
    raise ValueError(f'{path}: unknown file type {suffix!r}; allowed: {list(_SUFFIXES)}.')
  if importlib.util.find_spec('torch') is None:
    raise ImportError(
      f'{path}: reading a {suffix} file needs torch (pip install torch), or save the state dict '
      'with safetensors.torch.save_file and load the .safetensors file.'
    )
  import torch  # optional: needed for .pth/.pt files only

  state = torch.load(path, map_location='cpu', weights_only=True)
  if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
    raise ValueError(f'{path}: not a state dict (a mapping of names to tensors).')
  return {
    key: (value.detach().float() if value.is_floating_point() else value.detach()).numpy()
    for key, value in state.items()
  }


def torch_layout(model: nnx.Module, source: Source) -> tuple[dict[str, _Tensor], set[str]]:
  """The state dict `model` (a zoo model, possibly abstract) corresponds to.

  Returns:
    torch key -> its shape and the zoo variables it fills, covering every variable of `model`;
    and the keys a file may hold besides (BatchNorm's `num_batches_tracked` counters).
  """
  layout: dict[str, _Tensor] = {}
  optional = set()
  for path, variable in _variables(model).items():
    key = _torch_key(path.split('.'), source.renames)
    shape = _torch_shape(path, tuple(variable.get_value().shape))
    targets = ((path, shape),)
    if key in layout:
      targets = tuple(sorted(layout[key].targets + targets, key=_fused_position))
      shape = (sum(s[0] for _, s in targets),) + shape[1:]
    layout[key] = _Tensor(shape, targets)
    if path.endswith('.mean'):
      optional.add(f'{key.rsplit(".", 1)[0]}.{_BATCH_COUNTER}')
  return layout, optional


def _torch_key(parts: list[str], renames: Mapping[str, str]) -> str:
  *modules, leaf = parts
  if not modules:  # a parameter of the model itself (cls_token, position_embedding)
    return renames.get(leaf, leaf)
  return '.'.join([renames.get(p, p) for p in modules] + [_LEAF_NAMES.get(leaf, leaf)])


def _torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  if path.endswith('.kernel') and len(shape) == 4:  # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if path.endswith('.kernel') and len(shape) == 2:  # [in, out] -> [out, in]
    return shape[::-1]
  return shape


def _to_zoo(path: str, value: np.ndarray) -> np.ndarray:
  if path.endswith('.kernel') and value.ndim == 4:  # OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if path.endswith('.kernel') and value.ndim == 2:
    return value.T
  return value


def _fused_position(target: tuple[str, tuple[int, ...]]) -> int:
  return _FUSED_ORDER[target[0].split('.')[-2]]


def _variables(model: nnx.Module) -> dict[str, nnx.Variable]:
  return {
    '.'.join(str(p) for p in path): node
    for path, node in nnx.iter_graph(model)
    if isinstance(node, nnx.Variable)
  }


def _file_num_classes(tensors: Mapping[str, np.ndarray], renames: Mapping[str, str]) -> int:
  """The class count of the file's classifier; the public count if it has none (the check then
  names the missing key)."""
  head = tensors.get(_torch_key(['head', 'kernel'], renames))
  return int(head.shape[0]) if head is not None and head.ndim == 2 else PUBLIC_NUM_CLASSES


def _check(
  tensors: Mapping[str, np.ndarray], layout: Mapping[str, _Tensor], optional: set[str], where: str
) -> None:
  problems = []
  for key in sorted(layout):
    tensor = layout[key]
    if key not in tensors:
      problems.append(f'key {key!r}: expected shape {tensor.shape}, found no such key')
    elif tuple(tensors[key].shape) != tensor.shape:
      problems.append(
        f'key {key!r}: expected shape {tensor.shape}, found {tuple(tensors[key].shape)}'
      )
  for key in sorted(set(tensors) - set(layout)):
    found = tuple(tensors[key].shape)
    if key not in optional or found != ():
      problems.append(f'key {key!r}: expected no such key, found shape {found}')
  if problems:
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    raise ValueError(f'{where}: {problems[0]}{more}.')
