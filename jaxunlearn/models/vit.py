"""Vision Transformer (pre-LayerNorm blocks, learned position embeddings, no dropout).

With `gelu_approximate=False` and pooling 'cls' it is timm's VisionTransformer (class token,
LayerNorm epsilon 1e-6, exact erf GELU, final norm, head on the class token), whose weights
`jaxunlearn.models.pretrained` loads.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import initializers

_POOLINGS = ('cls', 'mean')
_KERNEL_INIT = initializers.xavier_uniform
_LN_EPSILON = 1e-6


def _linear(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, kernel_init=_KERNEL_INIT, rngs=rngs)


class SelfAttention(nnx.Module):
  """Multi-head self-attention built from nnx.Linear layers 'query', 'key', 'value', 'out'.

  Separate Linear layers (rather than nnx.MultiHeadAttention's LinearGeneral) let LoRA target
  the query and value projections by name.
  """

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.query = _linear(width, width, rngs)
    self.key = _linear(width, width, rngs)
    self.value = _linear(width, width, rngs)
    self.out = _linear(width, width, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, width = x.shape
    head_shape = (batch, tokens, self.num_heads, width // self.num_heads)
    q = jnp.reshape(self.query(x), head_shape)
    k = jnp.reshape(self.key(x), head_shape)
    v = jnp.reshape(self.value(x), head_shape)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_shape[-1]).astype(x.dtype)
    weights = jax.nn.softmax(logits, axis=-1)
    attended = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    return self.out(jnp.reshape(attended, x.shape))


class EncoderBlock(nnx.Module):
  """x + Attention(LN(x)), then + MLP(LN(.)) with a GELU hidden layer of `mlp_dim` units; the
  GELU is the tanh approximation if `gelu_approximate`, else the exact (erf) one."""

  def __init__(
    self,
    width: int,
    num_heads: int,
    mlp_dim: int,
    *,
    rngs: nnx.Rngs,
    gelu_approximate: bool = True,
  ):
    self.gelu_approximate = gelu_approximate
    self.attention_norm = nnx.LayerNorm(width, epsilon=_LN_EPSILON, rngs=rngs)
    self.attention = SelfAttention(width, num_heads, rngs=rngs)
    self.mlp_norm = nnx.LayerNorm(width, epsilon=_LN_EPSILON, rngs=rngs)
    self.mlp_in = _linear(width, mlp_dim, rngs)
    self.mlp_out = _linear(mlp_dim, width, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attention(self.attention_norm(x))
    hidden = nnx.gelu(self.mlp_in(self.mlp_norm(x)), approximate=self.gelu_approximate)
    return x + self.mlp_out(hidden)


class ViT(nnx.Module):
  """Vision Transformer on non-overlapping `patch_size` patches (a strided nnx.Conv embedding).

  pooling='cls' prepends a learned class token and classifies from its final representation;
  pooling='mean' has no class token and averages the final patch tokens.
  gelu_approximate: the MLPs' GELU is the tanh approximation (the default) or the exact one.
  Features (`feature_layers`): 'embed' (tokens plus position embeddings, [B, T, width]),
  'block0', ...,
  'block{depth-1}' (each encoder block's output, [B, T, width]), then 'penultimate' (the pooled,
  final-LayerNorm representation, [B, width], the head's input).
  `train` is accepted for a uniform model interface and has no effect (no dropout).
  """

  def __init__(
    self,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    rngs: nnx.Rngs,
    patch_size: int = 4,
    width: int = 192,
    depth: int = 6,
    num_heads: int = 3,
    mlp_dim: int | None = None,
    pooling: str = 'cls',
    gelu_approximate: bool = True,
  ):
    height, img_width, channels = input_shape
    for name, value in (
      ('patch_size', patch_size),
      ('width', width),
      ('depth', depth),
      ('num_heads', num_heads),
    ):
      if value < 1:
        raise ValueError(f'{name} must be a positive int, got {value!r}.')
    if height % patch_size or img_width % patch_size:
      raise ValueError(
        f'patch_size {patch_size} must divide the input height and width, got input_shape '
        f'{input_shape!r}.'
      )
    if width % num_heads:
      raise ValueError(f'num_heads {num_heads} must divide width {width}.')
    if pooling not in _POOLINGS:
      raise ValueError(f'pooling must be one of {_POOLINGS}, got {pooling!r}.')
    mlp_dim = 4 * width if mlp_dim is None else mlp_dim
    if mlp_dim < 1:
      raise ValueError(f'mlp_dim must be a positive int, got {mlp_dim!r}.')
    self.pooling = pooling
    self.patch_embed = nnx.Conv(
      channels,
      width,
      (patch_size, patch_size),
      strides=patch_size,
      padding='VALID',
      kernel_init=_KERNEL_INIT,
      rngs=rngs,
    )
    num_tokens = (height // patch_size) * (img_width // patch_size)
    if pooling == 'cls':
      self.cls_token = nnx.Param(jnp.zeros((1, 1, width)))
      num_tokens += 1
    else:
      self.cls_token = None
    self.position_embedding = nnx.Param(
      initializers.normal(0.02)(rngs.params(), (1, num_tokens, width))
    )
    self.blocks = nnx.List(
      [
        EncoderBlock(width, num_heads, mlp_dim, rngs=rngs, gelu_approximate=gelu_approximate)
        for _ in range(depth)
      ]
    )
    self.final_norm = nnx.LayerNorm(width, epsilon=_LN_EPSILON, rngs=rngs)
    self.head = self.head_layer(width, num_classes, rngs=rngs)

  @staticmethod
  def head_layer(in_features: int, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """A freshly initialised classifier head, as the constructor makes it."""
    return _linear(in_features, num_classes, rngs)

  def feature_layers(self) -> dict[str, str]:
    """The embedded tokens (the first block's input), every block's output and the head's input
    (`jaxunlearn.features`)."""
    points = {'embed': 'blocks.0:input'}
    points.update({f'block{i}': f'blocks.{i}' for i in range(len(self.blocks))})
    return {**points, 'penultimate': 'head:input'}

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    patches = self.patch_embed(x)
    h = jnp.reshape(patches, (patches.shape[0], -1, patches.shape[-1]))
    if self.cls_token is not None:
      cls = jnp.broadcast_to(self.cls_token[...], (h.shape[0], 1, h.shape[-1]))
      h = jnp.concatenate([cls, h], axis=1)
    h = h + self.position_embedding[...]
    for block in self.blocks:
      h = block(h)
    h = self.final_norm(h)
    return self.head(h[:, 0] if self.pooling == 'cls' else jnp.mean(h, axis=1))


def vit_tiny(
  *,
  num_classes: int,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  patch_size: int = 4,
  pooling: str = 'cls',
) -> ViT:
  """ViT-Tiny: width 192, depth 12, 3 heads, MLP 768."""
  return ViT(
    num_classes=num_classes,
    input_shape=input_shape,
    rngs=rngs,
    patch_size=patch_size,
    width=192,
    depth=12,
    num_heads=3,
    mlp_dim=768,
    pooling=pooling,
  )


def vit_small(
  *,
  num_classes: int,
  input_shape: tuple[int, int, int],
  rngs: nnx.Rngs,
  patch_size: int = 4,
  pooling: str = 'cls',
) -> ViT:
  """ViT-Small: width 384, depth 12, 6 heads, MLP 1536."""
  return ViT(
    num_classes=num_classes,
    input_shape=input_shape,
    rngs=rngs,
    patch_size=patch_size,
    width=384,
    depth=12,
    num_heads=6,
    mlp_dim=1536,
    pooling=pooling,
  )
