"""PyTorch re-statement of the project's models, for a side-by-side benchmark.

The modules mirror `jaxunlearn.models` ('cnn', 'resnet18', 'vit_tiny' and their smaller variants)
with the same attribute names, so a JAX parameter path maps mechanically onto a torch state-dict
key ('convs', 0, 'kernel' -> 'convs.0.weight'); `load_jax_variables` copies a JAX model's
variables in, converting the layouts:

* conv kernels: Flax HWIO -> torch OIHW; Linear kernels: Flax [in, out] -> torch [out, in];
* the CNN's dense layer: Flax flattens NHWC activations (rows ordered h, w, c), torch NCHW ones
  (c, h, w), so its kernel rows are permuted instead of transposing activations at run time;
* BatchNorm: Flax's momentum 0.9 (weight of the old average) is torch's 0.1, epsilon 1e-5 on both.
  One convention cannot be matched: Flax updates the running variance with the biased batch
  variance, torch with the unbiased one (n / (n - 1) larger). Train-mode losses and gradients do
  not read the running statistics, so the steps agree regardless.
* ViT: Flax's `nnx.gelu` is the tanh approximation (torch: approximate='tanh'); LayerNorm
  epsilon 1e-6; attention through `scaled_dot_product_attention` (the same softmax(qk/sqrt(d))v).

The steps that run on these models are in `experiments/torch_steps.py`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Flax name of a leaf -> torch name; the rest of the path is kept.
_LEAF_NAMES = {
  'kernel': 'weight',
  'scale': 'weight',
  'bias': 'bias',
  'mean': 'running_mean',
  'var': 'running_var',
}


class CNN(nn.Module):
  """`jaxunlearn.models.CNN`: [Conv 3x3 -> ReLU -> MaxPool 2x2] per channel width -> Dense ->
  ReLU -> head, on NCHW inputs."""

  def __init__(
    self,
    num_classes: int,
    input_shape: tuple[int, int, int],
    channels=(32, 64),
    dense_width: int = 128,
  ):
    super().__init__()
    height, width, in_channels = input_shape
    widths = (in_channels,) + tuple(channels)
    self.convs = nn.ModuleList(
      [nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in zip(widths[:-1], widths[1:])]
    )
    for _ in channels:
      height, width = height // 2, width // 2
    # The Flax kernel of `dense` reads its rows in (h, w, c) order; see `load_jax_variables`.
    self.flat_hwc = (height, width, channels[-1])
    self.dense = nn.Linear(height * width * channels[-1], dense_width)
    self.head = nn.Linear(dense_width, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for conv in self.convs:
      x = F.max_pool2d(F.relu(conv(x)), 2)
    return self.head(F.relu(self.dense(torch.flatten(x, 1))))


class BasicBlock(nn.Module):
  """`jaxunlearn.models.BasicBlock`."""

  def __init__(self, in_channels: int, out_channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1)
    self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1)
    if stride != 1 or in_channels != out_channels:
      self.shortcut_conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
      self.shortcut_bn = nn.BatchNorm2d(out_channels, eps=1e-5, momentum=0.1)
    else:
      self.shortcut_conv = None
      self.shortcut_bn = None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
    return F.relu(h + shortcut)


class ResNet(nn.Module):
  """`jaxunlearn.models.ResNet` (CIFAR stem); `model.train()` is Flax's ``train=True``."""

  def __init__(
    self,
    num_classes: int,
    input_shape: tuple[int, int, int],
    stage_sizes=(2, 2, 2, 2),
    width: int = 64,
  ):
    super().__init__()
    self.stem_conv = nn.Conv2d(input_shape[2], width, 3, 1, padding=1, bias=False)
    self.stem_bn = nn.BatchNorm2d(width, eps=1e-5, momentum=0.1)
    in_channels = width
    for stage, num_blocks in enumerate(stage_sizes):
      out_channels = width * 2**stage
      blocks = []
      for block in range(num_blocks):
        blocks.append(BasicBlock(in_channels, out_channels, 2 if stage > 0 and block == 0 else 1))
        in_channels = out_channels
      setattr(self, f'layer{stage + 1}', nn.ModuleList(blocks))
    self.head = nn.Linear(in_channels, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = F.relu(self.stem_bn(self.stem_conv(x)))
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      for block in layer:
        h = block(h)
    return self.head(h.mean(dim=(2, 3)))


class SelfAttention(nn.Module):
  """`jaxunlearn.models.vit.SelfAttention`: separate query, key, value and out projections."""

  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.query = nn.Linear(width, width)
    self.key = nn.Linear(width, width)
    self.value = nn.Linear(width, width)
    self.out = nn.Linear(width, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, width = x.shape
    heads = lambda t: t.view(batch, tokens, self.num_heads, -1).transpose(1, 2)
    attended = F.scaled_dot_product_attention(
      heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    )
    return self.out(attended.transpose(1, 2).reshape(batch, tokens, width))


class EncoderBlock(nn.Module):
  """`jaxunlearn.models.vit.EncoderBlock` (pre-LayerNorm, tanh-GELU MLP)."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.attention_norm = nn.LayerNorm(width, eps=1e-6)
    self.attention = SelfAttention(width, num_heads)
    self.mlp_norm = nn.LayerNorm(width, eps=1e-6)
    self.mlp_in = nn.Linear(width, mlp_dim)
    self.mlp_out = nn.Linear(mlp_dim, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attention(self.attention_norm(x))
    return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x)), approximate='tanh'))


class ViT(nn.Module):
  """`jaxunlearn.models.ViT` with class-token pooling."""

  def __init__(
    self,
    num_classes: int,
    input_shape: tuple[int, int, int],
    patch_size: int = 4,
    width: int = 192,
    depth: int = 6,
    num_heads: int = 3,
    mlp_dim: int | None = None,
  ):
    super().__init__()
    height, img_width, channels = input_shape
    mlp_dim = 4 * width if mlp_dim is None else mlp_dim
    self.patch_embed = nn.Conv2d(channels, width, patch_size, patch_size)
    num_tokens = (height // patch_size) * (img_width // patch_size) + 1
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.position_embedding = nn.Parameter(torch.zeros(1, num_tokens, width))
    self.blocks = nn.ModuleList([EncoderBlock(width, num_heads, mlp_dim) for _ in range(depth)])
    self.final_norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.patch_embed(x).flatten(2).transpose(1, 2)
    h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h], dim=1) + self.position_embedding
    for block in self.blocks:
      h = block(h)
    return self.head(self.final_norm(h)[:, 0])


def create_model(
  name: str, *, num_classes: int, input_shape: tuple[int, int, int], **kwargs
) -> nn.Module:
  """The torch twin of ``jaxunlearn.models.create_model(name, ...)``.

  Args:
    name: 'cnn', 'resnet18', 'vit' or 'vit_tiny'.
    num_classes: output classes.
    input_shape: (H, W, C) of one image, as for the JAX model.
    **kwargs: the model's keyword arguments (e.g. ``width`` of 'resnet18').

  Returns:
    The module, with arbitrary weights until `load_jax_variables`.
  """
  if name == 'cnn':
    return CNN(num_classes, input_shape, **kwargs)
  if name == 'resnet18':
    return ResNet(num_classes, input_shape, stage_sizes=(2, 2, 2, 2), **kwargs)
  if name == 'vit':
    return ViT(num_classes, input_shape, **kwargs)
  if name == 'vit_tiny':
    return ViT(num_classes, input_shape, width=192, depth=12, num_heads=3, mlp_dim=768, **kwargs)
  raise ValueError(
    f'No torch re-statement of model {name!r}; allowed: cnn, resnet18, vit, vit_tiny.'
  )


def _flatten(tree: dict, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = np.asarray(value)
  return out


def torch_name(path: tuple) -> str:
  """The torch state-dict key of a Flax variable path."""
  *modules, leaf = (str(p) for p in path)
  return '.'.join(modules + [_LEAF_NAMES.get(leaf, leaf)])


def to_torch_layout(model: nn.Module, path: tuple, value: np.ndarray) -> np.ndarray:
  """A Flax variable's value in the layout of its torch twin."""
  if path[-1] != 'kernel':
    return value
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if isinstance(model, CNN) and path[0] == 'dense':
    height, width, channels = model.flat_hwc
    return (
      value.reshape(height, width, channels, -1).transpose(3, 2, 0, 1).reshape(value.shape[1], -1)
    )
  return value.T


def to_jax_layout(model: nn.Module, path: tuple, value: np.ndarray) -> np.ndarray:
  """The inverse of `to_torch_layout`: a torch tensor's value in its Flax variable's layout."""
  if path[-1] != 'kernel':
    return value
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if isinstance(model, CNN) and path[0] == 'dense':
    height, width, channels = model.flat_hwc
    return (
      value.reshape(-1, channels, height, width).transpose(2, 3, 1, 0).reshape(value.shape[1], -1)
    )
  return value.T


def load_jax_variables(model: nn.Module, variables: dict) -> None:
  """Copies ``{'params': ..., 'batch_stats': ...}`` (Flax pure dicts) into `model`, in place.

  Raises:
    ValueError: when the two models' variables do not correspond one to one, or a shape differs.
  """
  state = model.state_dict()
  flat = {**_flatten(variables['params']), **_flatten(variables.get('batch_stats', {}))}
  names = {torch_name(path): path for path in flat}
  expected = {k for k in state if not k.endswith('num_batches_tracked')}
  if set(names) != expected:
    raise ValueError(
      f'variables do not match: only in JAX {sorted(set(names) - expected)}, only '
      f'in torch {sorted(expected - set(names))}.'
    )
  with torch.no_grad():
    for name, path in names.items():
      value = to_torch_layout(model, path, flat[path])
      if tuple(value.shape) != tuple(state[name].shape):
        raise ValueError(f'{name}: shape {value.shape} from {path}, torch has {state[name].shape}.')
      state[name].copy_(torch.from_numpy(np.array(value)))


def jax_tree(model: nn.Module, like: dict, tensors: dict[str, torch.Tensor]) -> dict:
  """`tensors` (torch name -> tensor, e.g. parameters or their gradients) as a nested dict shaped
  like the Flax pure dict `like`, in Flax layouts (float32 NumPy arrays)."""

  def build(tree, prefix):
    return {
      key: build(value, prefix + (key,))
      if isinstance(value, dict)
      else to_jax_layout(
        model, prefix + (key,), tensors[torch_name(prefix + (key,))].detach().float().cpu().numpy()
      )
      for key, value in tree.items()
    }

  return build(like, ())


def parameters_like(model: nn.Module, tree: dict) -> list[torch.Tensor]:
  """The model's parameters in the order of the Flax pure dict `tree`'s flattened leaves."""
  named = dict(model.named_parameters())
  return [named[torch_name(path)] for path in _flatten(tree)]


def tensors_like(model: nn.Module, tree: dict, device=None) -> list[torch.Tensor]:
  """The leaves of the Flax pure dict `tree` (e.g. a 0/1 mask) as torch tensors in torch layouts,
  in the order of `parameters_like`."""
  return [
    torch.from_numpy(np.array(to_torch_layout(model, path, value))).to(device)
    for path, value in _flatten(tree).items()
  ]
