"""What every unlearning method shares: its context, what it returns, a generic gradient step and
parameter sweeps.

A method is ``build(ctx, cfg) -> Plan``, registered with `jaxunlearn.methods.registry.register`:
it states its losses, its step kinds and their schedule over the sources 'forget' (D_f), 'retain'
(D_r) and 'all' (D_f u D_r, with a constant ``is_forget`` vector telling them apart), its initial
state and its run constants. The shared loop runs it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn import losses
from jaxunlearn.data import gather_images
from jaxunlearn.data.device import DeviceData, chunked_sum
from jaxunlearn.loop import Program, StepFn
from jaxunlearn.state import ModelFns, TrainState
from jaxunlearn.train import apply_gradients

# loss_fn(params, state, batch, key, constants) -> (loss, (new_batch_stats, metrics))
LossFn = Callable[[Any, TrainState, dict, jax.Array, Any], tuple[jax.Array, tuple[Any, dict]]]


class Plan(NamedTuple):
  """What a method's `build` returns: the program, its initial state (what the run changes and
  checkpoints hold) and its run constants (what stays fixed: never checkpointed).

  `finalize` maps the final state to the unlearned model's variables, in the original
  architecture (default: the state's own params and batch_stats); `info` holds numbers to report
  with the run's scores, e.g. 'trainable_fraction' (default 1: every weight may move) or a
  method's diagnostics.
  """

  program: Program
  state: TrainState
  constants: dict
  finalize: Callable[[TrainState], dict] | None = None
  info: dict | None = None


@dataclasses.dataclass(frozen=True)
class UnlearnContext:
  """What a method may read: the model, the original weights and the data it unlearns on."""

  model_fns: ModelFns
  original: dict  # variables of the original (pre-unlearning) model
  data: DeviceData  # train data on device with sources 'all', 'forget', 'retain'
  num_classes: int
  batch_size: int
  seed: int
  mesh: Any
  init_variables: Callable[[int], dict]  # fresh, randomly initialised variables for a seed
  cache_dir: str = ''  # where a method may cache statistics of the original ('' = none)
  model_name: str = ''  # the architecture's name in `jaxunlearn.models.MODELS`

  @property
  def num_forget(self) -> int:
    return len(self.data.sources['forget'])

  @property
  def num_retain(self) -> int:
    return len(self.data.sources['retain'])

  def steps_per_epoch(self, source: str) -> int:
    return math.ceil(len(self.data.sources[source]) / self.batch_size)

  def is_forget(self) -> jax.Array:
    """A 0/1 vector over training positions marking D_f."""
    flags = np.zeros(len(self.data.sources['all']), np.float32)
    flags[self.data.sources['forget']] = 1.0
    return jnp.asarray(flags)


def gradient_step(
  loss_fn: LossFn,
  tx: optax.GradientTransformation,
  *,
  mask: str | None = None,
) -> StepFn:
  """A step that descends `loss_fn` with the optimiser 'main' (ascent = a negated loss); with
  `mask`, the run constant of that name multiplies the final update."""

  def step(state: TrainState, batch: dict, key: jax.Array, constants):
    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state, batch, key, constants
    )
    state = apply_gradients(
      state.replace(batch_stats=batch_stats),
      grads,
      tx,
      'main',
      mask=constants[mask] if mask else None,
    )
    return state, {'loss': loss, **metrics}

  return step


def forward(ctx_fns: ModelFns, params, state: TrainState, images):
  """The student's train-mode logits and new batch statistics."""
  return ctx_fns.apply({'params': params, 'batch_stats': state.batch_stats}, images, train=True)


def cross_entropy_loss(model_fns: ModelFns, slot: str, *, sign: float = 1.0) -> LossFn:
  """``sign`` x weighted CE on the batch in `slot` (sign -1: gradient ascent)."""

  def loss_fn(params, state, batch, key, constants):
    del key, constants
    data = batch[slot]
    logits, batch_stats = forward(model_fns, params, state, data['image'])
    ce = losses.weighted_cross_entropy(logits, data['label'], data['weight'])
    acc = losses.weighted_accuracy(logits, data['label'], data['weight'])
    return sign * ce, (batch_stats, {f'{slot}_ce': ce, f'{slot}_accuracy': acc})

  return loss_fn


def random_other_labels(key: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Uniform labels over the classes other than the true one (the true label is never drawn)."""
  offset = jax.random.randint(key, labels.shape, 1, num_classes)
  return (labels + offset) % num_classes


GRADIENT_STATISTICS = ('mean_gradient', 'batch_fisher', 'empirical_fisher')


def gradient_statistic(
  model_fns: ModelFns,
  variables: dict,
  data: DeviceData,
  source: str,
  batch_size: int,
  statistic: str,
  *,
  loop: str = 'auto',
) -> Any:
  """A per-parameter statistic of the CE gradient on `source` at `variables`, in one pass over the
  whole set:

  * 'mean_gradient': the mean over mini-batches of the batch-mean gradient (SalUn takes its
    absolute value);
  * 'batch_fisher': the mean over mini-batches of the squared batch-mean gradient (the SFR-on
    official code's Fisher diagonal);
  * 'empirical_fisher': the mean over examples of the squared per-example gradient (`jax.vmap`
    of `jax.grad`; the Fisher diagonal as the SFR-on paper writes it).

  `loop` 'scan' runs the pass as one jitted `lax.scan`; 'host' dispatches one jitted accumulation
  per batch from a Python loop (asynchronously, on-device sums, no host sync until the end); 'auto'
  is 'host' on CPU, where the rolled scan around a convolution's gradient is several times slower
  (docs/speed.md, "Loop forms"), and 'scan' elsewhere, where it is one dispatch.

  Eval-mode BatchNorm and no augmentation. The last batch is padded with zero-weight rows, so each
  example counts once (for the batch statistics, the last batch is a mean over its real rows).
  """
  if statistic not in GRADIENT_STATISTICS:
    raise ValueError(f'statistic={statistic!r}: allowed values are {GRADIENT_STATISTICS}.')
  positions = data.sources[source]

  def batch_loss(params, images, labels, weight):
    logits, _ = model_fns.apply(
      {'params': params, 'batch_stats': variables['batch_stats']}, images, train=False
    )
    return losses.weighted_cross_entropy(logits, labels, weight)

  def example_loss(params, image, label):
    return batch_loss(params, image[None], label[None], jnp.ones((1,)))

  def contribution(params, images_all, labels_all, pos, w):
    images = gather_images(images_all, data.info, pos)
    labels = jnp.take(labels_all, pos, axis=0)
    if statistic == 'empirical_fisher':
      grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, images, labels)
      return jax.tree.map(lambda g: jnp.tensordot(w, jnp.square(g), axes=1), grads)
    grads = jax.grad(batch_loss)(params, images, labels, w)
    return jax.tree.map(jnp.square, grads) if statistic == 'batch_fisher' else grads

  total = chunked_sum(
    contribution, positions, batch_size, variables['params'], data.images, data.labels, loop=loop
  )
  count = len(positions) if statistic == 'empirical_fisher' else -(-len(positions) // batch_size)
  return jax.tree.map(lambda t: t / count, total)


def top_fraction_mask(scores, fraction: float):
  """1 for exactly round(`fraction` x size) parameters, pooled over the whole tree, with the largest
  scores; ties (e.g. the many exact-zero gradients of a model that fits D_f to float32 precision)
  are broken by position, as the SalUn reference's rank-based threshold does. A plain
  ``score >= k-th largest`` threshold would select every tied weight instead.
  """
  leaves, treedef = jax.tree.flatten(scores)
  flat = jnp.concatenate([jnp.ravel(s) for s in leaves])
  k = int(round(fraction * flat.size))
  order = jnp.argsort(-flat, stable=True)
  selected = jnp.zeros(flat.shape, jnp.float32).at[order[:k]].set(1.0)
  sizes = np.cumsum([s.size for s in leaves])[:-1]
  parts = jnp.split(selected, sizes)
  return jax.tree.unflatten(treedef, [p.reshape(s.shape) for p, s in zip(parts, leaves)])
