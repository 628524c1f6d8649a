r"""Writes the small torchvision and timm models that tests/test_pretrained.py loads without torch.

  pip install -e '.[bench]' && python -m experiments.make_pretrained_fixtures

Each fixture is a model with the public architecture's state-dict layout at tiny sizes (a ResNet
built from torchvision's own classes with `width` channels in its first stage instead of 64; a
timm VisionTransformer with embedding width 32 and depth 2), with every weight and every
BatchNorm statistic random, in eval mode. For fixture NAME the binary writes into --out_dir:

* pretrained_NAME.safetensors: the state dict (`safetensors.torch`);
* pretrained_NAME.npz: 'architecture' (the `load_pretrained` name), 'kwargs' (JSON: the zoo
  sizes `load_pretrained` takes for it), 'images' (a random batch, NCHW float32) and 'logits'
  (the model's eval-mode output on it).

The torch helpers (`public_model`, `randomize`) also serve the full-size comparison in
tests/test_pretrained.py. torch, torchvision and timm are imported here only.
"""

import io
import json
import math
import os

import numpy as np
import safetensors.torch
import timm
import torch
import torchvision
from absl import app, flags
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from jaxunlearn.files import atomic_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
BATCH = 2
# Name -> (architecture, zoo sizes, image height and width). Odd, unequal ResNet image sides check
# PyTorch's symmetric padding of the strided convs and the max-pool.
FIXTURES = {
  'resnet18': ('torchvision:resnet18', dict(width=2), (37, 29)),
  'resnet50': ('torchvision:resnet50', dict(width=2), (37, 29)),
  'vit': (
    'timm:vit_tiny_patch16_224',
    dict(patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64),
    (32, 32),
  ),
}
_RESNET_LAYOUTS = {
  'torchvision:resnet18': (BasicBlock, (2, 2, 2, 2)),
  'torchvision:resnet34': (BasicBlock, (3, 4, 6, 3)),
  'torchvision:resnet50': (Bottleneck, (3, 4, 6, 3)),
}

_OUT_DIR = flags.DEFINE_string(
  'out_dir', os.path.join(REPO, 'tests', 'fixtures'), 'Folder the fixtures are written to.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the weights, statistics and images.')


class SmallResNet(torchvision.models.ResNet):
  """torchvision's ResNet with `width` channels in the first stage instead of 64.

  torchvision fixes 64 in `ResNet.__init__`, so this sets the attributes that its `_make_layer`
  and `forward` read and builds the stages with `_make_layer` and torchvision's blocks: the same
  modules and state-dict keys as `torchvision.models.resnet18()` and the others.
  """

  def __init__(self, block: type[nn.Module], layers, width: int, num_classes: int):
    nn.Module.__init__(self)
    self._norm_layer = nn.BatchNorm2d
    self.inplanes = width
    self.dilation = 1
    self.groups = 1
    self.base_width = 64  # a Bottleneck's inner width is then its `planes`
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, width, layers[0])
    self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(8 * width * block.expansion, num_classes)


def public_model(architecture: str) -> nn.Module:
  """The full-size public model `architecture` (a `load_pretrained` name), initialised by its
  library, not downloaded."""
  source, name = architecture.split(':')
  if source == 'torchvision':
    return getattr(torchvision.models, name)()
  return timm.create_model(name, pretrained=False)


def small_model(architecture: str, sizes: dict, image_size: tuple[int, int]) -> nn.Module:
  """The public layout of `architecture` at the zoo sizes `sizes`, with NUM_CLASSES classes."""
  if architecture in _RESNET_LAYOUTS:
    block, layers = _RESNET_LAYOUTS[architecture]
    return SmallResNet(block, layers, sizes['width'], NUM_CLASSES)
  return VisionTransformer(
    img_size=image_size,
    patch_size=sizes['patch_size'],
    embed_dim=sizes['width'],
    depth=sizes['depth'],
    num_heads=sizes['num_heads'],
    mlp_ratio=sizes['mlp_dim'] / sizes['width'],
    num_classes=NUM_CLASSES,
  )


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Draws every floating-point tensor of `model`'s state dict, puts it in eval mode and returns
  it: weights N(0, 1 / fan_in), biases N(0, 0.1^2), norm scales U(0.5, 1.5), BatchNorm running
  means N(0, 0.1^2) and variances U(0.5, 2), timm's class token and position embedding
  N(0, 0.5^2). Library inits leave biases, norms and statistics at 0 or 1, which would not
  check their loading."""
  generator = torch.Generator().manual_seed(seed)

  def normal(shape, std):
    return torch.randn(shape, generator=generator) * std

  def uniform(shape, low, high):
    return low + (high - low) * torch.rand(shape, generator=generator)

  with torch.no_grad():
    for key, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue  # BatchNorm's num_batches_tracked
      leaf = key.rsplit('.', 1)[-1]
      shape = tensor.shape
      if leaf == 'running_var':
        value = uniform(shape, 0.5, 2.0)
      elif leaf in ('running_mean', 'bias'):
        value = normal(shape, 0.1)
      elif leaf in ('cls_token', 'pos_embed'):
        value = normal(shape, 0.5)
      elif tensor.ndim == 1:
        value = uniform(shape, 0.5, 1.5)
      else:
        value = normal(shape, 1.0 / math.sqrt(math.prod(shape[1:])))
      tensor.copy_(value)
  return model.eval()


def write_fixture(name: str, out_dir: str, seed: int) -> str:
  """Builds, randomises and runs fixture `name`; writes its two files; returns a summary line."""
  architecture, sizes, image_size = FIXTURES[name]
  model = randomize(small_model(architecture, sizes, image_size), seed)
  generator = torch.Generator().manual_seed(seed + 1)
  images = torch.randn((BATCH, 3, *image_size), generator=generator)
  with torch.no_grad():
    logits = model(images)
  state = {key: tensor.contiguous() for key, tensor in model.state_dict().items()}
  with atomic_file(os.path.join(out_dir, f'pretrained_{name}.safetensors'), 'wb') as f:
    f.write(safetensors.torch.save(state))
  buffer = io.BytesIO()
  np.savez(
    buffer,
    architecture=np.asarray(architecture),
    kwargs=np.asarray(json.dumps(sizes)),
    images=images.numpy(),
    logits=logits.numpy(),
  )
  with atomic_file(os.path.join(out_dir, f'pretrained_{name}.npz'), 'wb') as f:
    f.write(buffer.getvalue())
  count = sum(t.numel() for t in state.values())
  return f'{name}: {architecture} {sizes}, {len(state)} tensors, {count} values'


def main(argv):
  del argv
  for name in FIXTURES:
    print(write_fixture(name, _OUT_DIR.value, _SEED.value))


if __name__ == '__main__':
  app.run(main)
