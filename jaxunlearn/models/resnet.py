"""ResNets: the CIFAR ResNet-18 (3x3 stem, stride 1, no max-pool) and torchvision's ImageNet ones.

The options give torchvision's architectures (`stem='imagenet'`, `block='bottleneck'`) with its
conventions: symmetric padding, BatchNorm epsilon 1e-5, and for Bottleneck blocks the stride on the
3x3 conv (torchvision's "ResNet v1.5"). `jaxunlearn.models.pretrained` loads their weights.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import initializers

# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (weight of the old running average),
# the setting of the reference unlearning code.
_BN_MOMENTUM = 0.9
_STEMS = ('cifar', 'imagenet')
_BLOCKS = ('basic', 'bottleneck')


def _conv(in_channels: int, out_channels: int, size: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  # Symmetric padding size // 2, as PyTorch's; 'SAME' pads asymmetrically at stride 2.
  pad = (size // 2, size // 2)
  return nnx.Conv(
    in_channels,
    out_channels,
    (size, size),
    strides=stride,
    padding=(pad, pad),
    use_bias=False,
    kernel_init=initializers.he_normal_fan_out,
    rngs=rngs,
  )


def _batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(channels, momentum=_BN_MOMENTUM, epsilon=1e-5, rngs=rngs)


class _Shortcut(nnx.Module):
  """Adds the projection shortcut (1x1 conv + BN) to a block when its output shape differs from
  its input's, else the identity."""

  def _init_shortcut(self, in_channels: int, out_channels: int, stride: int, rngs: nnx.Rngs):
    if stride != 1 or in_channels != out_channels:
      self.shortcut_conv = _conv(in_channels, out_channels, 1, stride, rngs)
      self.shortcut_bn = _batch_norm(out_channels, rngs)
    else:
      self.shortcut_conv = None
      self.shortcut_bn = None

  def _shortcut(self, x: jax.Array, frozen: bool) -> jax.Array:
    if self.shortcut_conv is None:
      return x
    return self.shortcut_bn(self.shortcut_conv(x), use_running_average=frozen)


class BasicBlock(_Shortcut):
  """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes), then ReLU."""

  expansion = 1

  def __init__(self, in_channels: int, channels: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(in_channels, channels, 3, stride, rngs)
    self.bn1 = _batch_norm(channels, rngs)
    self.conv2 = _conv(channels, channels, 3, 1, rngs)
    self.bn2 = _batch_norm(channels, rngs)
    self._init_shortcut(in_channels, channels, stride, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    frozen = not train
    h = nnx.relu(self.bn1(self.conv1(x), use_running_average=frozen))
    h = self.bn2(self.conv2(h), use_running_average=frozen)
    return nnx.relu(h + self._shortcut(x, frozen))


class Bottleneck(_Shortcut):
  """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN plus shortcut, then ReLU; the output has
  4 * `channels` channels. The stride sits on the 3x3 conv, as in torchvision."""

  expansion = 4

  def __init__(self, in_channels: int, channels: int, stride: int, *, rngs: nnx.Rngs):
    out_channels = channels * self.expansion
    self.conv1 = _conv(in_channels, channels, 1, 1, rngs)
    self.bn1 = _batch_norm(channels, rngs)
    self.conv2 = _conv(channels, channels, 3, stride, rngs)
    self.bn2 = _batch_norm(channels, rngs)
    self.conv3 = _conv(channels, out_channels, 1, 1, rngs)
    self.bn3 = _batch_norm(out_channels, rngs)
    self._init_shortcut(in_channels, out_channels, stride, rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    frozen = not train
    h = nnx.relu(self.bn1(self.conv1(x), use_running_average=frozen))
    h = nnx.relu(self.bn2(self.conv2(h), use_running_average=frozen))
    h = self.bn3(self.conv3(h), use_running_average=frozen)
    return nnx.relu(h + self._shortcut(x, frozen))


class ResNet(nnx.Module):
  """ResNet of four stages; stage s's blocks have `width` * 2**s channels (times 4 at a
  Bottleneck's output), and every stage but the first starts with a stride-2 block.

  stem='cifar': 3x3 conv, stride 1, BN, ReLU. stem='imagenet': 7x7 conv, stride 2, BN, ReLU, then
  a 3x3 max-pool with stride 2 and padding 1 (torchvision's). block='basic' or 'bottleneck'.
  Features (`feature_layers`): 'stem', then 'layer{s}.{b}' for stage s (1-based) and block b
  (0-based), then
  'penultimate' (global average pool of the last block, the head's input).
  `train=True` normalises with batch statistics and updates the running averages;
  `train=False` uses the running averages and leaves them unchanged.
  """

  def __init__(
    self,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    rngs: nnx.Rngs,
    stage_sizes: Sequence[int] = (2, 2, 2, 2),
    width: int = 64,
    block: str = 'basic',
    stem: str = 'cifar',
  ):
    stage_sizes = tuple(stage_sizes)
    if len(stage_sizes) != 4 or any(int(n) < 1 for n in stage_sizes):
      raise ValueError(f'stage_sizes must be 4 positive ints, got {stage_sizes!r}.')
    if width < 1:
      raise ValueError(f'width must be a positive int, got {width!r}.')
    if block not in _BLOCKS:
      raise ValueError(f'block must be one of {_BLOCKS}, got {block!r}.')
    if stem not in _STEMS:
      raise ValueError(f'stem must be one of {_STEMS}, got {stem!r}.')
    block_class = BasicBlock if block == 'basic' else Bottleneck
    self.stem = stem
    if stem == 'cifar':
      self.stem_conv = _conv(input_shape[2], width, 3, 1, rngs)
    else:
      self.stem_conv = _conv(input_shape[2], width, 7, 2, rngs)
    self.stem_bn = _batch_norm(width, rngs)
    in_channels = width
    for stage, num_blocks in enumerate(stage_sizes):
      channels = width * 2**stage
      blocks = []
      for index in range(num_blocks):
        stride = 2 if stage > 0 and index == 0 else 1
        blocks.append(block_class(in_channels, channels, stride, rngs=rngs))
        in_channels = channels * block_class.expansion
      setattr(self, f'layer{stage + 1}', nnx.List(blocks))
    self.head = self.head_layer(in_channels, num_classes, rngs=rngs)

  @staticmethod
  def head_layer(in_features: int, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """A freshly initialised classifier head, as the constructor makes it."""
    return nnx.Linear(in_features, num_classes, kernel_init=initializers.lecun_normal, rngs=rngs)

  def feature_layers(self) -> dict[str, str]:
    """The stem's output (the first block's input), every block's output and the head's input
    (`jaxunlearn.features`)."""
    points = {'stem': 'layer1.0:input'}
    for stage, layer in enumerate(self.stages()):
      points.update({f'layer{stage + 1}.{b}': f'layer{stage + 1}.{b}' for b in range(len(layer))})
    return {**points, 'penultimate': 'head:input'}

  def stages(self) -> tuple[nnx.List, ...]:
    return (self.layer1, self.layer2, self.layer3, self.layer4)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    h = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    if self.stem == 'imagenet':
      # Max-pool padding counts as -inf, as in PyTorch.
      h = nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for layer in self.stages():
      for block in layer:
        h = block(h, train=train)
    return self.head(jnp.mean(h, axis=(1, 2)))


def resnet18(
  *,
  num_classes: int,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  width: int = 64,
  stem: str = 'cifar',
) -> ResNet:
  """ResNet-18 (BasicBlocks [2, 2, 2, 2]); `width` is the first stage's channels (64 standard);
  stem 'cifar' (the default) or 'imagenet' (torchvision's resnet18)."""
  return ResNet(
    num_classes=num_classes,
    input_shape=input_shape,
    rngs=rngs,
    stage_sizes=(2, 2, 2, 2),
    width=width,
    stem=stem,
  )


def resnet34(
  *,
  num_classes: int,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  width: int = 64,
  stem: str = 'cifar',
) -> ResNet:
  """ResNet-34 (BasicBlocks [3, 4, 6, 3]); `width` and `stem` as in `resnet18`."""
  return ResNet(
    num_classes=num_classes,
    input_shape=input_shape,
    rngs=rngs,
    stage_sizes=(3, 4, 6, 3),
    width=width,
    stem=stem,
  )


def resnet50(
  *,
  num_classes: int,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  width: int = 64,
  stem: str = 'cifar',
) -> ResNet:
  """ResNet-50 (Bottleneck blocks [3, 4, 6, 3], outputs 4 * width * 2**stage channels); `width`
  and `stem` as in `resnet18`."""
  return ResNet(
    num_classes=num_classes,
    input_shape=input_shape,
    rngs=rngs,
    stage_sizes=(3, 4, 6, 3),
    width=width,
    block='bottleneck',
    stem=stem,
  )
