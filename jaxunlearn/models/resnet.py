"""ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import initializers

# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (weight of the old running average),
# the setting of the reference unlearning code.
_BN_MOMENTUM = 0.9
_PAD_1 = ((1, 1), (1, 1))


def _conv3x3(in_channels: int, out_channels: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
  # Symmetric padding 1, as in the reference code; 'SAME' pads asymmetrically at stride 2.
  return nnx.Conv(
    in_channels,
    out_channels,
    (3, 3),
    strides=stride,
    padding=_PAD_1,
    use_bias=False,
    kernel_init=initializers.he_normal_fan_out,
    rngs=rngs,
  )


def _batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(channels, momentum=_BN_MOMENTUM, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus shortcut (1x1 conv + BN when the shape changes), then ReLU."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv3x3(in_channels, out_channels, stride, rngs)
    self.bn1 = _batch_norm(out_channels, rngs)
    self.conv2 = _conv3x3(out_channels, out_channels, 1, rngs)
    self.bn2 = _batch_norm(out_channels, rngs)
    if stride != 1 or in_channels != out_channels:
      self.shortcut_conv = nnx.Conv(
        in_channels,
        out_channels,
        (1, 1),
        strides=stride,
        padding='VALID',
        use_bias=False,
        kernel_init=initializers.he_normal_fan_out,
        rngs=rngs,
      )
      self.shortcut_bn = _batch_norm(out_channels, rngs)
    else:
      self.shortcut_conv = None
      self.shortcut_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    frozen = not train
    h = nnx.relu(self.bn1(self.conv1(x), use_running_average=frozen))
    h = self.bn2(self.conv2(h), use_running_average=frozen)
    if self.shortcut_conv is None:
      shortcut = x
    else:
      shortcut = self.shortcut_bn(self.shortcut_conv(x), use_running_average=frozen)
    return nnx.relu(h + shortcut)


class ResNet(nnx.Module):
  """CIFAR-style ResNet of BasicBlocks; stage widths are `width` * (1, 2, 4, 8).

  Features (`feature_layers`): 'stem', then 'layer{s}.{b}' for stage s (1-based) and block b (0-based), then
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
  ):
    stage_sizes = tuple(stage_sizes)
    if len(stage_sizes) != 4 or any(int(n) < 1 for n in stage_sizes):
      raise ValueError(f'stage_sizes must be 4 positive ints, got {stage_sizes!r}.')
    if width < 1:
      raise ValueError(f'width must be a positive int, got {width!r}.')
    self.stem_conv = _conv3x3(input_shape[2], width, 1, rngs)
    self.stem_bn = _batch_norm(width, rngs)
    in_channels = width
    for stage, num_blocks in enumerate(stage_sizes):
      out_channels = width * 2**stage
      blocks = []
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(BasicBlock(in_channels, out_channels, stride, rngs=rngs))
        in_channels = out_channels
      setattr(self, f'layer{stage + 1}', nnx.List(blocks))
    self.head = nnx.Linear(
      in_channels, num_classes, kernel_init=initializers.lecun_normal, rngs=rngs
    )

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
    for layer in self.stages():
      for block in layer:
        h = block(h, train=train)
    return self.head(jnp.mean(h, axis=(1, 2)))


def resnet18(
  *, num_classes: int, input_shape: tuple[int, int, int], rngs: nnx.Rngs, width: int = 64
) -> ResNet:
  """ResNet-18 (BasicBlocks [2, 2, 2, 2]); `width` is the first stage's channels (64 standard)."""
  return ResNet(
    num_classes=num_classes,
    input_shape=input_shape,
    rngs=rngs,
    stage_sizes=(2, 2, 2, 2),
    width=width,
  )
