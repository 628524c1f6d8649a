"""load_pretrained: torchvision/timm state dicts give the torch models' logits; bad files and names.

The fixtures (tests/fixtures/pretrained_*, written by `experiments/make_pretrained_fixtures.py`)
are small torchvision ResNets and a timm ViT with random weights and BatchNorm statistics, their
input batch and eval-mode logits, so these tests need no torch. The full-size comparisons build
the public models with torch and skip where torch, torchvision or timm do not import.
"""

import functools
import importlib.util
import json
import math
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from jaxunlearn.features import features_of
from jaxunlearn.models import PRETRAINED, create_model, load_pretrained
from jaxunlearn.models.pretrained import torch_layout

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
FIXTURE_NAMES = ('resnet18', 'resnet50', 'vit')
RTOL = 1e-4
HAS_TORCH = importlib.util.find_spec('torch') is not None
HAS_TORCH_MODELS = HAS_TORCH and all(importlib.util.find_spec(m) for m in ('torchvision', 'timm'))


def _fixture_path(name: str, suffix: str) -> str:
  return os.path.join(FIXTURES, f'pretrained_{name}{suffix}')


@functools.cache
def _fixture(name: str) -> tuple[str, dict, np.ndarray, np.ndarray]:
  """(architecture, load_pretrained kwargs, NHWC images, expected logits) of fixture `name`."""
  with np.load(_fixture_path(name, '.npz')) as f:
    images = f['images'].transpose(0, 2, 3, 1)  # torch's NCHW -> NHWC
    kwargs = dict(json.loads(str(f['kwargs'])), input_shape=images.shape[1:])
    return str(f['architecture']), kwargs, images, f['logits']


def _load(name: str, path: str | None = None, **overrides) -> nnx.Module:
  architecture, kwargs, _, _ = _fixture(name)
  return load_pretrained(
    path or _fixture_path(name, '.safetensors'), architecture, **{**kwargs, **overrides}
  )


@nnx.jit
def _apply(model, images):
  return features_of(model, images)[:2]


def _relative_error(actual, expected) -> float:
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize('name', FIXTURE_NAMES)
def test_fixture_gives_the_torch_logits(name):
  _, _, images, expected = _fixture(name)
  logits, _ = _apply(_load(name), images)
  assert logits.shape == expected.shape
  assert _relative_error(logits, expected) < RTOL


def test_fixture_features_follow_the_zoo_names():
  _, features = _apply(_load('resnet50'), _fixture('resnet50')[2])
  blocks = [f'layer{s + 1}.{b}' for s, n in enumerate((3, 4, 6, 3)) for b in range(n)]
  assert list(features) == ['stem', *blocks, 'penultimate']
  # 37x29 -> 7x7/2 conv 19x15 -> 3x3/2 max-pool 10x8; Bottleneck outputs 4 * width channels.
  assert features['stem'].shape == (2, 10, 8, 2)
  assert features['layer1.0'].shape == (2, 10, 8, 8)
  assert features['penultimate'].shape == (2, 64)


@pytest.mark.parametrize('name', ['resnet18', 'vit'])
def test_new_head_has_the_new_class_count_and_the_same_body(name):
  images = _fixture(name)[2]
  original = _load(name)
  replaced = _load(name, num_classes=3, rngs=nnx.Rngs(7))
  logits, features = _apply(replaced, images)
  _, original_features = _apply(original, images)
  assert logits.shape == (2, 3)
  np.testing.assert_array_equal(features['penultimate'], original_features['penultimate'])
  # The zoo's fresh head (its head_layer), drawn from the given rngs.
  fresh = type(replaced).head_layer(replaced.head.in_features, 3, rngs=nnx.Rngs(7))
  np.testing.assert_array_equal(replaced.head.kernel[...], fresh.kernel[...])
  np.testing.assert_array_equal(replaced.head.bias[...], np.zeros(3))
  with pytest.raises(ValueError, match='num_classes must be a positive int, got 0.'):
    _load(name, num_classes=0)


def _write_changed(tmp_path, name: str, change) -> str:
  tensors = safetensors.numpy.load_file(_fixture_path(name, '.safetensors'))
  change(tensors)
  path = str(tmp_path / f'{name}.safetensors')
  safetensors.numpy.save_file(tensors, path)
  return path


def _error(exception, call) -> str:
  with pytest.raises(exception) as info:
    call()
  message = str(info.value)
  assert '\n' not in message
  return message


def test_missing_key_is_named_with_its_shape(tmp_path):
  path = _write_changed(tmp_path, 'resnet18', lambda t: t.pop('layer2.0.downsample.1.weight'))
  message = _error(ValueError, lambda: _load('resnet18', path))
  assert message == (
    f"{path} as torchvision:resnet18: key 'layer2.0.downsample.1.weight': expected shape (4,), "
    'found no such key.'
  )


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
  def change(tensors):
    tensors['blocks.1.attn.qkv.weight'] = tensors['blocks.1.attn.qkv.weight'][:64]

  path = _write_changed(tmp_path, 'vit', change)
  message = _error(ValueError, lambda: _load('vit', path))
  assert message.endswith(
    "key 'blocks.1.attn.qkv.weight': expected shape (96, 32), found (64, 32)."
  )


def test_unexpected_keys_are_named_and_counted(tmp_path):
  def change(tensors):
    tensors['layer5.0.conv1.weight'] = np.zeros((2, 2, 3, 3), np.float32)
    tensors['layer5.0.conv2.weight'] = np.zeros((2, 2, 3, 3), np.float32)

  path = _write_changed(tmp_path, 'resnet18', change)
  message = _error(ValueError, lambda: _load('resnet18', path))
  assert message.endswith(
    "key 'layer5.0.conv1.weight': expected no such key, found shape (2, 2, 3, 3) (and 1 more)."
  )


def test_sizes_of_another_variant_are_a_shape_mismatch():
  message = _error(ValueError, lambda: _load('resnet18', width=4))
  assert "key 'bn1.bias': expected shape (4,), found (2,) (and " in message


def test_batch_counters_are_optional(tmp_path):
  path = _write_changed(
    tmp_path,
    'resnet18',
    lambda t: [t.pop(k) for k in list(t) if k.endswith('num_batches_tracked')],
  )
  _, _, images, expected = _fixture('resnet18')
  assert _relative_error(_apply(_load('resnet18', path), images)[0], expected) < RTOL


def test_unknown_architecture_names_the_allowed_ones():
  message = _error(
    ValueError, lambda: load_pretrained(_fixture_path('vit', '.safetensors'), 'timm:vit_huge')
  )
  assert message.startswith("Unknown pretrained architecture 'timm:vit_huge'; allowed: [")
  assert "'torchvision:resnet50'" in message


def test_missing_file_and_unknown_file_type(tmp_path):
  missing = str(tmp_path / 'absent.safetensors')
  assert _error(FileNotFoundError, lambda: _load('vit', missing)) == f'{missing}: no such file.'
  npz = _fixture_path('vit', '.npz')
  assert _error(ValueError, lambda: _load('vit', npz)) == (
    f"{npz}: unknown file type '.npz'; allowed: ['.safetensors', '.pth', '.pt']."
  )


@pytest.mark.skipif(HAS_TORCH, reason='checks the message shown without torch')
def test_pth_without_torch_is_one_line(tmp_path):
  path = tmp_path / 'model.pth'
  path.write_bytes(b'')
  message = _error(ImportError, lambda: _load('resnet18', str(path)))
  assert message.startswith(f'{path}: reading a .pth file needs torch')


# The public models' well-known parameter counts (BatchNorm statistics not counted).
PUBLIC_PARAMETERS = {
  'torchvision:resnet18': 11_689_512,
  'torchvision:resnet34': 21_797_672,
  'torchvision:resnet50': 25_557_032,
  'timm:vit_tiny_patch16_224': 5_717_416,
  'timm:vit_small_patch16_224': 22_050_664,
  'timm:vit_base_patch16_224': 86_567_656,
}


@pytest.mark.parametrize('architecture', sorted(PRETRAINED))
def test_full_size_layouts_have_the_public_parameter_counts(architecture):
  source = PRETRAINED[architecture]
  model = nnx.eval_shape(
    lambda: create_model(
      source.zoo_name,
      num_classes=1000,
      input_shape=(224, 224, 3),
      rngs=nnx.Rngs(0),
      **source.zoo_kwargs,
    )
  )
  layout, _ = torch_layout(model, source)
  params = nnx.state(model, nnx.Param)
  assert sum(math.prod(v.shape) for v in jax.tree.leaves(params)) == PUBLIC_PARAMETERS[architecture]
  # Every zoo variable is filled by exactly one torch tensor.
  targets = [target for tensor in layout.values() for target, _ in tensor.targets]
  assert len(targets) == len(set(targets)) == len(jax.tree.leaves(nnx.state(model)))


# ------------------------------------------------ full size, against torch (skipped without it)


@pytest.mark.skipif(
  not HAS_TORCH_MODELS, reason='needs torch, torchvision and timm (the bench extra)'
)
@pytest.mark.parametrize('architecture', sorted(PRETRAINED))
def test_full_size_public_model_gives_its_logits(architecture, tmp_path):
  import safetensors.torch
  import torch

  from experiments.make_pretrained_fixtures import public_model, randomize

  model = randomize(public_model(architecture), seed=0)
  images = torch.randn((2, 3, 224, 224), generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    expected = model(images).numpy()
  state = {key: tensor.contiguous() for key, tensor in model.state_dict().items()}
  path = str(tmp_path / 'model.safetensors')
  safetensors.torch.save_file(state, path)
  logits, _ = _apply(load_pretrained(path, architecture), images.numpy().transpose(0, 2, 3, 1))
  error = _relative_error(logits, expected)
  print(f'{architecture}: max relative error {error:.2e}')
  assert error < RTOL


@pytest.mark.skipif(not HAS_TORCH, reason='needs torch')
def test_pth_state_dict_loads_like_safetensors(tmp_path):
  import torch

  tensors = safetensors.numpy.load_file(_fixture_path('vit', '.safetensors'))
  path = str(tmp_path / 'model.pth')
  torch.save({key: torch.from_numpy(value) for key, value in tensors.items()}, path)
  _, _, images, expected = _fixture('vit')
  assert _relative_error(_apply(_load('vit', path), images)[0], expected) < RTOL
