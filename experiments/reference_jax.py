"""The JAX side of the PyTorch comparison (`experiments/reference_benchmark.py`): the library's own
step functions, compiled as its loop compiles them, and the inputs and settings both sides share.

The step kinds, with SGD (momentum 0.9, PyTorch-convention weight decay 5e-4) from
`jaxunlearn.optim`:

* 'sgd': `jaxunlearn.train.supervised_step`, mean cross-entropy descent (the Original's and
  Retrain's step);
* 'salun': RL's step (`jaxunlearn.methods.random_label`) on a batch whose D_f rows (a quarter)
  carry random other labels, the final update multiplied by a fixed 0/1 mask, as SalUn builds it;
* 'sfron': one `jaxunlearn.methods.sfron.iteration` with separate fast optimisers and the mask on
  the gradient and the final forget update: a forget ascent on ``-s mean_i eps_i l_i`` (eps the
  per-batch normalised 1 / (l^0.5 + 1e-15), detached), the gradient clipped to norm 7 with the
  torch formula; one remain descent; then the slow step with alpha 0.5.

Inputs are random normalised float32 images (no dataset is read); the whole SFR-on run gathers
batches from random uint8 CIFAR-sized images kept on the device.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import sharding, train
from jaxunlearn.config import OptimizerConfig
from jaxunlearn.config import sgd as sgd_settings
from jaxunlearn.methods import random_label, sfron
from jaxunlearn.methods.base import gradient_step
from jaxunlearn.models import create_model, set_compute_dtype
from jaxunlearn.optim import make_optimizer
from jaxunlearn.state import TrainState, functionalize
from jaxunlearn.train import create_state

NUM_CLASSES = 10
INPUT_SHAPES = {'cnn': (28, 28, 1), 'resnet18': (32, 32, 3), 'vit_tiny': (32, 32, 3)}
KINDS = ('sgd', 'salun', 'sfron')
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
MASK_DENSITY = 0.5
FORGET_FRACTION = 0.25
SFRON = dict(scale=25.0, lam=0.5, clip=7.0, slow_rate=0.5)
# Steps both sides run on the same batches, their losses compared, before anything is timed.
AGREEMENT_STEPS = 3
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclasses.dataclass(frozen=True)
class Case:
  """One model, batch size and compute dtype, timed for some step kinds."""

  model: str
  batch: int
  compute: str = 'float32'
  kinds: tuple[str, ...] = KINDS
  timed_steps: int = 10
  repeats: int = 5

  @property
  def name(self) -> str:
    return f'{self.model}-b{self.batch}-{self.compute}'


@dataclasses.dataclass(frozen=True)
class RunCase:
  """A whole SFR-on schedule on ResNet-18 with random CIFAR-sized data."""

  batch: int
  iterations: int
  num_forget: int
  num_retain: int
  forget_every: int = 5
  width: int = 64


def sgd_config(
  lr: float, momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY
) -> OptimizerConfig:
  """The optimizer config of `jaxunlearn.optim.make_optimizer`: SGD, constant `lr`."""
  return sgd_settings(lr, momentum=momentum, weight_decay=weight_decay)


def sfron_config(optimizer: OptimizerConfig, iterations: int, fade: str) -> sfron.SfronConfig:
  """The SFR-on settings both sides run: separate fast optimisers, the mask on the gradient and
  the final forget update, per-batch weights (`SFRON`'s lambda), forget scale `SFRON['scale']`
  faded by `fade`, the gradient clipped to `SFRON['clip']`, one remain step, slow rate
  `SFRON['slow_rate']`."""
  return sfron.SfronConfig(
    iterations=iterations,
    optimizer=optimizer,
    forget_optimizer=optimizer,
    forget_scale=SFRON['scale'],
    forget_fade=fade,
    forget_clip=SFRON['clip'],
    mask_on='update',
    weight_lambda=SFRON['lam'],
    weight_normalisation='batch',
    slow_rate=SFRON['slow_rate'],
  )


def random_mask(params: dict, density: float, seed: int) -> dict:
  """A fixed 0/1 float32 mask shaped like `params` (a pure dict), 1 with probability `density`."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: (rng.random(p.shape) < density).astype(np.float32), params)


def make_batch(rng: np.random.Generator, batch: int, input_shape: tuple[int, int, int]) -> dict:
  """Random normalised images, labels, SalUn's random other labels and D_f flags (NumPy)."""
  labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
  return {
    'image': rng.standard_normal((batch,) + input_shape, np.float32),
    'label': labels,
    'random_label': ((labels + rng.integers(1, NUM_CLASSES, batch)) % NUM_CLASSES).astype(np.int32),
    'is_forget': (np.arange(batch) < FORGET_FRACTION * batch).astype(np.int32),
  }


def kind_inputs(kind: str, rng: np.random.Generator, batch: int, input_shape) -> dict:
  """One step's host inputs of `kind`: a batch, or for 'sfron' a forget and a remain batch."""
  if kind == 'sfron':
    return {
      'forget': make_batch(rng, batch, input_shape),
      'remain': make_batch(rng, batch, input_shape),
    }
  return make_batch(rng, batch, input_shape)


def run_data(run: RunCase, rng: np.random.Generator) -> dict:
  """The whole SFR-on run's random uint8 CIFAR-sized images and labels of D_f and D_r (NumPy)."""
  shape = INPUT_SHAPES['resnet18']
  return {
    source: {
      'image': rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
      'label': rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    }
    for source, n in (('forget', run.num_forget), ('remain', run.num_retain))
  }


def run_schedule(
  run: RunCase, rng: np.random.Generator
) -> list[tuple[bool, np.ndarray, np.ndarray]]:
  """Per iteration of the whole SFR-on run: whether it forgets (every `forget_every`-th), and the
  positions of its D_f and D_r batches."""
  return [
    (
      t % run.forget_every == 0,
      rng.choice(run.num_forget, run.batch, replace=False).astype(np.int32),
      rng.choice(run.num_retain, run.batch, replace=False).astype(np.int32),
    )
    for t in range(run.iterations)
  ]


def as_floats(value) -> list[float]:
  """A step's loss or losses as floats; NaN for a loss the step did not compute (None)."""
  values = value if isinstance(value, tuple) else (value,)
  return [float('nan') if v is None else float(v) for v in values]


def _examples(batch: dict, offset: int = 0) -> dict:
  """A benchmark batch as a slot of the library's steps: images, labels, weight 1, positions."""
  n = len(batch['label'])
  return {
    'image': batch['image'],
    'label': batch['label'],
    'weight': np.ones(n, np.float32),
    'position': np.arange(offset, offset + n, dtype=np.int32),
  }


def _losses_of(kind: str, metrics: dict):
  """The losses a kind's step reports, in the order of the torch `Stepper`'s return value."""
  if kind == 'sfron':
    return metrics.get('forget_weighted_ce'), metrics['remain_ce']
  return metrics['loss']


def _cifar_slot(data: dict, idx: jax.Array) -> dict:
  """The examples at `idx` of uint8 CIFAR-sized data, normalised, as a slot of the library's steps."""
  images = jnp.take(data['image'], idx, axis=0).astype(jnp.float32) / 255.0
  return {
    'image': (images - jnp.asarray(CIFAR_MEAN)) / jnp.asarray(CIFAR_STD),
    'label': jnp.take(data['label'], idx),
    'weight': jnp.ones(idx.shape, jnp.float32),
    'position': idx,
  }


class JaxSteps:
  """The library's step functions of one model, compiled as its loop compiles them.

  Each step kind is jitted with the state and the run constants as arguments and the step
  counter advanced, as `jaxunlearn.loop` runs it; the loop's gather of a batch from dataset
  positions is not timed (both sides receive ready batches).

  Args:
    name: model name for `jaxunlearn.models.create_model`.
    input_shape: (H, W, C).
    seed: the model's initialisation seed.
    compute: 'float32', 'tf32' or 'bfloat16' (layers compute in bfloat16).
    model_kwargs: extra model keyword arguments.
    devices: the devices of the data-parallel mesh (`jaxunlearn.sharding.make_mesh`: batches
      sharded, state replicated); default: the first device.
    lr: learning rate of the 'sgd' and 'salun' steps and of the 'sfron' iteration.
    momentum: SGD momentum.
    weight_decay: PyTorch-convention weight decay.
  """

  def __init__(
    self,
    name: str,
    *,
    input_shape: tuple[int, int, int],
    seed: int = 0,
    compute: str = 'float32',
    model_kwargs: dict | None = None,
    devices=None,
    lr: float = LR,
    momentum: float = MOMENTUM,
    weight_decay: float = WEIGHT_DECAY,
  ):
    model = create_model(
      name,
      num_classes=NUM_CLASSES,
      input_shape=input_shape,
      rngs=nnx.Rngs(seed),
      **(model_kwargs or {}),
    )
    if compute == 'bfloat16':
      set_compute_dtype(model, 'bfloat16')
    self.model_fns, self.variables = functionalize(model)
    self.mask = random_mask(self.variables['params'], MASK_DENSITY, seed)
    self.optimizer = sgd_config(lr, momentum, weight_decay)
    self.mesh = sharding.make_mesh(devices or jax.devices()[:1])
    self.replicated = sharding.replicated(self.mesh)
    self.batch_sharded = sharding.batch_sharded(self.mesh)
    tx = make_optimizer(self.optimizer, 1)
    one_iteration = sfron.run_without_data(
      sfron_config(self.optimizer, 1, 'constant'), self.model_fns, self.batch_sharded
    )
    self.txs = {'sgd': {'main': tx}, 'salun': {'main': tx}, 'sfron': one_iteration.txs}
    step_fns = {
      'sgd': train.supervised_step(self.model_fns, tx),
      'salun': gradient_step(random_label.relabel_loss(self.model_fns), tx, mask='mask'),
      'sfron': lambda state, batch, key, constants: sfron.iteration(
        one_iteration, state, batch, constants, with_forget=True
      ),
    }
    self.steps = {kind: self._compile(kind, fn) for kind, fn in step_fns.items()}

  def _compile(self, kind: str, fn):
    key = jax.random.key(0)  # none of these steps draws a random number

    def step(state, batch, constants):
      new_state, metrics = fn(state, batch, key, constants)
      return new_state.replace(step=state.step + 1), _losses_of(kind, metrics)

    return jax.jit(step, out_shardings=self.replicated)

  def sfron_run_iteration(self, iterations: int):
    """One iteration of a whole SFR-on run of `iterations` iterations (cosine learning rate and
    forget-scale fade over the step counter): batches gathered from uint8 data on the device and
    normalised, then `sfron.iteration`. Returns a jitted
    ``(state, data, forget_idx, remain_idx, constants, *, with_forget) -> (state, losses)``."""
    settings = sfron.run_without_data(
      sfron_config(self.optimizer.replace(schedule='cosine'), iterations, 'cosine'),
      self.model_fns,
      self.batch_sharded,
    )

    def run_iteration(state, data, forget_idx, remain_idx, constants, *, with_forget):
      def slot(source, idx):
        return _cifar_slot(data[source], jax.lax.with_sharding_constraint(idx, self.batch_sharded))

      slots = {'remain': slot('remain', remain_idx)}
      if with_forget:
        slots['forget'] = slot('forget', forget_idx)
      new_state, metrics = sfron.iteration(
        settings, state, slots, constants, with_forget=with_forget
      )
      return new_state.replace(step=state.step + 1), _losses_of('sfron', metrics)

    return jax.jit(run_iteration, static_argnames='with_forget', out_shardings=self.replicated)

  def sfron_run(self, run: RunCase, data: dict, schedule):
    """``run_all()``: a whole SFR-on run from the initial weights over `schedule`
    (`run_schedule`) on `data` (`run_data`), returning every iteration's losses once the last is
    done. The data is placed on the mesh here, once; the iteration compiles on the first call."""
    run_iteration = self.sfron_run_iteration(run.iterations)
    device_data = sharding.replicate(data, self.mesh)
    constants = sharding.replicate({'mask': self.mask}, self.mesh)

    def run_all() -> list[list[float]]:
      state, losses = self.init_state('sfron'), []
      for with_forget, f_idx, r_idx in schedule:
        state, loss = run_iteration(
          state, device_data, f_idx, r_idx, constants, with_forget=with_forget
        )
        losses.append(loss)
      jax.block_until_ready(state)
      return [as_floats(jax.device_get(loss)) for loss in losses]

    return run_all

  def prepare(self, kind: str, batches: list[dict]) -> tuple[list[dict], dict]:
    """The benchmark's host batches of `kind` as the library step's device batches (sharded)
    and its run constants (replicated): SalUn's D_f flags and random labels by position (batch i
    at positions i * B ...), the mask."""
    constants = {'mask': self.mask}
    if kind == 'sfron':
      device = [
        {'forget': _examples(b['forget']), 'remain': _examples(b['remain'])} for b in batches
      ]
    else:
      n = len(batches[0]['label'])
      device = [{'train': _examples(b, i * n)} for i, b in enumerate(batches)]
    if kind == 'salun':
      constants['is_forget'] = np.concatenate([b['is_forget'] for b in batches])
      constants['random_labels'] = np.concatenate([b['random_label'] for b in batches])
    elif kind == 'sgd':
      constants = {}
    return (
      [sharding.shard_global_batch(b, self.mesh) for b in device],
      sharding.replicate(constants, self.mesh),
    )

  def init_state(self, kind: str) -> TrainState:
    """A fresh state for step `kind` at the initial weights."""
    return sharding.replicate(create_state(self.variables, self.txs[kind]), self.mesh)

  def runner(self, kind: str, state: TrainState, batch: dict, constants: dict):
    """``run(n)``: n steps of `kind` on one fixed device batch from `state`, then a wait for the
    last; each call goes on from the state the previous one left."""
    step, current = self.steps[kind], [state]

    def run(steps: int) -> None:
      for _ in range(steps):
        current[0], loss = step(current[0], batch, constants)
      jax.block_until_ready((current[0], loss))

    return run

  def forward(self, params: dict, batch_stats: dict, images: jax.Array):
    """Train-mode logits and the updated BatchNorm statistics."""
    return self.model_fns.apply({'params': params, 'batch_stats': batch_stats}, images, train=True)
