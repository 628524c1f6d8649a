r"""jaxunlearn against a PyTorch re-statement of the same models and steps, in one process.

  python -m experiments.benchmark --config.reference=torch                     # CPU, a few minutes
  python -m experiments.benchmark --config.reference=torch --config.device_preset=gpu \
      --config.sfron_run=True

Per case (model, batch size, compute dtype) and step kind, both sides start from the same weights
(the JAX model's, copied into the torch twin of `experiments/torch_reference.py`), run
`AGREEMENT_STEPS` steps on the same batches and must agree on every loss (relative `TOLERANCES`) or
the run stops with `AgreementError`: a wrong re-statement cannot yield a flattering ratio. The first
loss (before any update) checks the model tightly; the later ones the update, where float32
rounding differences grow (ResNet-18 at batch 16: 4e-6 after one SGD step, 4e-4 after two, while
in float64 the two stay within 1e-7). Small terms such as the weight decay are checked by
tests/test_torch_reference.py with hyperparameters that make them large. Then the two are timed
on one fixed batch after a warm-up step, interleaved A, B, B, A, ... (`repeats` rounds of
`timed_steps` steps each, synchronised: `block_until_ready`, `torch.cuda.synchronize`), and the
JSON holds the median time per step of each side, the median over rounds of the per-round ratio
jax / torch and the ratio of the fastest rounds.

On the CPU the JAX side shards each batch over one CPU device per core (`cpu_devices`; see
`jaxunlearn.sharding.use_one_cpu_device_per_core`) and torch runs as many threads; with
`cpu_single_device_baseline`, the JAX step on one device ('jax_1device') is timed in the same
rounds, so the gain of the data parallelism is measured under the same load, and
'default_layout' names the faster of the two: the layout the main job's probe picks
(`jaxunlearn.experiment.probe_cpu_layout`, --config.num_devices=-1), with its ratio to torch. On a machine
that other processes load, PyTorch's OpenMP threads spin at every op's barrier while a peer is
descheduled, and its step time grows several-fold (the CNN's SGD step from 27 ms to 270-520 ms on
2 busy cores) while XLA's barely moves: such a run flatters JAX. The JSON records the load average;
compare only runs on a quiet machine, or run both with ``OMP_WAIT_POLICY=PASSIVE`` (torch then
loses less to a load but some speed on a quiet machine).

The step kinds are the library's own step functions (`JaxSteps`), jitted as its loop jits them,
with SGD (momentum 0.9, PyTorch-convention weight decay 5e-4) from `jaxunlearn.optim`:

* 'sgd': `jaxunlearn.train.supervised_step`, mean cross-entropy descent (the Original's and
  Retrain's step);
* 'salun': RL's step (`jaxunlearn.methods.random_label`) on a batch whose D_f rows (a quarter)
  carry random other labels, the final update multiplied by a fixed 0/1 mask, as SalUn builds it;
* 'sfron': one `jaxunlearn.methods.sfron.iteration` with separate fast optimisers and the mask on
  the gradient and the final forget update: a forget ascent on ``-s mean_i eps_i l_i`` (eps the
  per-batch normalised 1 / (l^0.5 + 1e-15), detached), the gradient clipped to norm 7 with the
  torch formula; one remain descent; then the slow step with alpha 0.5.

The torch side is the re-statement in `experiments/torch_reference.py`.
Inputs are random normalised float32 images (no dataset is read). With `sfron_run`, a whole
SFR-on schedule runs on ResNet-18 with random uint8 CIFAR-sized images kept on the device (batches
gathered and normalised inside the step): forget every 5th iteration, cosine learning rate and
cosine-faded forget scale 25, as the official code; both sides draw the same batches.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxunlearn import files, sharding, train
from jaxunlearn.config import OptimizerConfig
from jaxunlearn.config import sgd as sgd_settings
from jaxunlearn.methods import random_label, sfron
from jaxunlearn.methods.base import gradient_step
from jaxunlearn.models import create_model, set_compute_dtype
from jaxunlearn.optim import make_optimizer, make_schedule
from jaxunlearn.state import TrainState, functionalize
from jaxunlearn.train import create_state

NUM_CLASSES = 10
INPUT_SHAPES = {'cnn': (28, 28, 1), 'resnet18': (32, 32, 3), 'vit_tiny': (32, 32, 3)}
KINDS = ('sgd', 'salun', 'sfron')
# Relative loss agreement (first step, later steps). float32 differs only by summation order;
# tf32 and bfloat16 round inputs differently on the two sides (and autocast keeps some ops in
# float32 that Flax runs in bfloat16).
TOLERANCES = {'float32': (1e-5, 1e-3), 'tf32': (5e-3, 2e-2), 'bfloat16': (2e-2, 5e-2)}
AGREEMENT_STEPS = 3
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4
MASK_DENSITY = 0.5
FORGET_FRACTION = 0.25
SFRON = dict(scale=25.0, lam=0.5, clip=7.0, slow_rate=0.5)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DATA_AXIS = 'data'
OUT_DIR = os.path.join(os.path.dirname(__file__), 'benchmarks')


class AgreementError(RuntimeError):
  """The JAX and torch steps disagree: the re-statement is wrong, so no ratio is written."""


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


# CPU sizes keep the whole run to a few minutes on 2 cores: ResNet-18 and ViT-Tiny at batch 16
# with few timed steps; the CNN at its training batch of 128.
PRESETS = {
  'cpu': dict(
    cases=(
      Case('cnn', 128, timed_steps=10, repeats=7),
      Case('resnet18', 16, timed_steps=2, repeats=3),
      Case('vit_tiny', 16, timed_steps=2, repeats=3),
    ),
    run=RunCase(batch=16, iterations=10, num_forget=64, num_retain=192),
  ),
  'gpu': dict(
    cases=(
      Case('cnn', 128, timed_steps=100, repeats=5),
      Case('cnn', 512, kinds=('sgd',), timed_steps=100, repeats=5),
      Case('resnet18', 128, timed_steps=30, repeats=5),
      Case('resnet18', 128, 'tf32', kinds=('sgd',), timed_steps=30, repeats=5),
      Case('resnet18', 128, 'bfloat16', kinds=('sgd',), timed_steps=30, repeats=5),
      Case('resnet18', 256, kinds=('sgd',), timed_steps=30, repeats=5),
      Case('resnet18', 256, 'bfloat16', kinds=('sgd',), timed_steps=30, repeats=5),
      Case('vit_tiny', 128, timed_steps=30, repeats=5),
      Case('vit_tiny', 128, 'bfloat16', kinds=('sgd',), timed_steps=30, repeats=5),
    ),
    run=RunCase(batch=128, iterations=500, num_forget=5000, num_retain=45000),
  ),
}


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


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def random_mask(params: dict, density: float, seed: int) -> dict:
  """A fixed 0/1 float32 mask shaped like `params` (a pure dict), 1 with probability `density`."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: (rng.random(p.shape) < density).astype(np.float32), params)


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


class JaxSteps:
  """The JAX side: the library's own step functions, compiled as its loop compiles them.

  'sgd' is `jaxunlearn.train.supervised_step` (the Original's and Retrain's step), 'salun' RL's
  step (`jaxunlearn.methods.random_label.relabel_loss` under `methods.base.gradient_step`) with a
  saliency mask as SalUn builds it, 'sfron' one `jaxunlearn.methods.sfron.iteration` with a forget
  update. Each is jitted with the state and the run constants as arguments and the step counter
  advanced, as `jaxunlearn.loop` runs it; the loop's gather of a batch from dataset positions is
  not timed (both sides receive ready batches).

  Args:
    name: model name for `jaxunlearn.models.create_model`.
    input_shape: (H, W, C).
    seed: the model's initialisation seed.
    compute: 'float32', 'tf32' or 'bfloat16' (layers compute in bfloat16).
    model_kwargs: extra model keyword arguments.
    devices: the devices of the data-parallel mesh (batches sharded, state replicated, as the
      project's loop does); default: the first device.
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
    self.lr = lr
    self.optimizer = sgd_config(lr, momentum, weight_decay)
    mesh = Mesh(np.asarray(devices or jax.devices()[:1]), (DATA_AXIS,))
    self.replicated = NamedSharding(mesh, PartitionSpec())
    self.batch_sharded = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    tx = make_optimizer(self.optimizer, 1)
    self.sfron = sfron.settings(
      sfron_config(self.optimizer, 1, 'constant'), self.model_fns, self.batch_sharded
    )
    self.txs = {'sgd': {'main': tx}, 'salun': {'main': tx}, 'sfron': self.sfron.txs}
    step_fns = {
      'sgd': train.supervised_step(self.model_fns, tx),
      'salun': gradient_step(random_label.relabel_loss(self.model_fns), tx, mask='mask'),
      'sfron': self._sfron_step(self.sfron, with_forget=True),
    }
    self.steps = {kind: self._compile(kind, fn) for kind, fn in step_fns.items()}

  def _compile(self, kind: str, fn):
    key = jax.random.key(0)  # none of these steps draws a random number

    def step(state, batch, constants):
      new_state, metrics = fn(state, batch, key, constants)
      return new_state.replace(step=state.step + 1), _losses_of(kind, metrics)

    return jax.jit(step, out_shardings=self.replicated)

  @staticmethod
  def _sfron_step(settings: sfron.Settings, *, with_forget: bool):
    def step(state, batch, key, constants):
      del key
      return sfron.iteration(settings, state, batch, constants, with_forget=with_forget)

    return step

  def sfron_run_iteration(self, iterations: int):
    """One iteration of a whole SFR-on run of `iterations` iterations (cosine learning rate and
    forget-scale fade over the step counter): batches gathered from uint8 data on the device and
    normalised, then `sfron.iteration`. Returns a jitted
    ``(state, data, forget_idx, remain_idx, constants, *, with_forget) -> (state, losses)``."""
    settings = sfron.settings(
      sfron_config(self.optimizer.replace(schedule='cosine'), iterations, 'cosine'),
      self.model_fns,
      self.batch_sharded,
    )

    def run_iteration(state, data, forget_idx, remain_idx, constants, *, with_forget):
      def batch(source, idx):
        idx = jax.lax.with_sharding_constraint(idx, self.batch_sharded)
        images = jnp.take(data[source]['image'], idx, axis=0).astype(jnp.float32) / 255.0
        images = (images - jnp.asarray(CIFAR_MEAN)) / jnp.asarray(CIFAR_STD)
        return {
          'image': images,
          'label': jnp.take(data[source]['label'], idx),
          'weight': jnp.ones(idx.shape, jnp.float32),
          'position': idx,
        }

      slots = {'remain': batch('remain', remain_idx)}
      if with_forget:
        slots['forget'] = batch('forget', forget_idx)
      new_state, metrics = sfron.iteration(
        settings, state, slots, constants, with_forget=with_forget
      )
      return new_state.replace(step=state.step + 1), _losses_of('sfron', metrics)

    return jax.jit(run_iteration, static_argnames='with_forget', out_shardings=self.replicated)

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
      [jax.device_put(b, self.batch_sharded) for b in device],
      jax.device_put(constants, self.replicated),
    )

  def init_state(self, kind: str) -> TrainState:
    """A fresh state for step `kind` at the initial weights."""
    return jax.device_put(create_state(self.variables, self.txs[kind]), self.replicated)

  def forward(self, params: dict, batch_stats: dict, images: jax.Array):
    """Train-mode logits (float32) and the updated BatchNorm statistics."""
    return self.model_fns.apply({'params': params, 'batch_stats': batch_stats}, images, train=True)


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
  if kind == 'sfron':
    return {
      'forget': make_batch(rng, batch, input_shape),
      'remain': make_batch(rng, batch, input_shape),
    }
  return make_batch(rng, batch, input_shape)


def to_torch(tree: dict, device):
  """NumPy inputs as torch tensors on `device` (images NHWC -> NCHW; int labels as int64)."""
  import torch

  def convert(key, value):
    if isinstance(value, dict):
      return {k: convert(k, v) for k, v in value.items()}
    if key == 'image':
      value = value.transpose(0, 3, 1, 2)
    tensor = torch.from_numpy(np.ascontiguousarray(value))
    return (tensor.long() if tensor.dtype == torch.int32 else tensor).to(device)

  return {k: convert(k, v) for k, v in tree.items()}


class Precision:
  """Sets the matmul/conv precision of both libraries for one compute mode; restores on exit."""

  def __init__(self, compute: str):
    self.compute = compute
    self._jax = jax.default_matmul_precision(
      'tensorfloat32' if compute == 'tf32' else 'highest' if compute == 'float32' else None
    )

  def __enter__(self):
    import torch

    self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.compute == 'tf32'
    self._jax.__enter__()
    return self

  def __exit__(self, *exc):
    import torch

    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved
    return self._jax.__exit__(*exc)


def _sync_torch(device) -> None:
  import torch

  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def _losses(value) -> list[float]:
  values = value if isinstance(value, tuple) else (value,)
  return [float('nan') if v is None else float(v) for v in values]


def relative_difference(a: list[float], b: list[float]) -> float:
  """max_i |a_i - b_i| / max(|b_i|, 1e-6), over the finite pairs (NaN marks no value)."""
  diffs = [
    abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b) if not (np.isnan(x) and np.isnan(y))
  ]
  return max(diffs) if diffs else 0.0


def parameter_difference(jax_params: dict, torch_params: dict) -> float:
  """||theta_jax - theta_torch|| / ||theta_torch|| over all parameters (Flax layouts)."""
  diff = sum(
    float(np.sum((np.asarray(a, np.float64) - b) ** 2))
    for a, b in zip(jax.tree.leaves(jax_params), jax.tree.leaves(torch_params))
  )
  norm = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in jax.tree.leaves(torch_params))
  return float(np.sqrt(diff / norm))


def _check_agreement(
  label: str, jax_losses, torch_losses, jax_params, torch_params, compute: str
) -> dict:
  """The relative differences of one JAX side from torch; raises AgreementError beyond the
  tolerances of `compute`."""
  first = relative_difference(jax_losses[0], torch_losses[0])
  rel = max(relative_difference(a, b) for a, b in zip(jax_losses, torch_losses))
  params_diff = parameter_difference(jax_params, torch_params)
  tolerance = TOLERANCES[compute]
  if not (first <= tolerance[0] and rel <= tolerance[1] and params_diff <= tolerance[1]):
    raise AgreementError(
      f'{label}: relative differences: first loss {first:.2e}, losses {rel:.2e}, parameters '
      f'{params_diff:.2e} (tolerances {tolerance}): jax {jax_losses}, torch {torch_losses}.'
    )
  return {
    'jax_losses': jax_losses,
    'first_loss_relative_difference': first,
    'loss_relative_difference': rel,
    'params_relative_difference': params_diff,
    'loss_tolerances': tolerance,
  }


def compare_case(
  case: Case, device, jax_devices=None, single_device_baseline: bool = False, seed: int = 0
) -> dict:
  """Agreement check and interleaved timing of every step kind of `case`.

  Args:
    case: the model, batch, compute dtype and kinds.
    device: the torch device.
    jax_devices: the JAX side's data-parallel devices (default: the first device).
    single_device_baseline: also time the JAX step on the first of `jax_devices` alone
      ('jax_1device'), interleaved with the others: the gain of the data parallelism under the
      same load.
    seed: initialisation and data seed.

  Returns:
    Per kind: the torch losses and time per step; per JAX side ('jax', 'jax_1device') its losses,
    their relative differences from torch, the parameter difference after the agreement steps,
    the compile time, the time per step and its ratios to torch; and every round's times.

  Raises:
    AgreementError: when a loss, or the parameters after the agreement steps, differ by more
      than the compute dtype's tolerance.
  """
  import torch

  from experiments import torch_reference

  input_shape = INPUT_SHAPES[case.model]
  devices = list(jax_devices or jax.devices()[:1])
  build = lambda devs: JaxSteps(
    case.model, input_shape=input_shape, seed=seed, compute=case.compute, devices=devs
  )
  sides = {'jax': build(devices)}
  if single_device_baseline and len(devices) > 1:
    sides['jax_1device'] = build(devices[:1])
  reference = sides['jax']
  autocast = torch.bfloat16 if case.compute == 'bfloat16' else None
  results = {}
  for kind in case.kinds:
    rng = np.random.default_rng(seed + 1)
    batches = [kind_inputs(kind, rng, case.batch, input_shape) for _ in range(AGREEMENT_STEPS)]
    torch_model = torch_reference.create_model(
      case.model, num_classes=NUM_CLASSES, input_shape=input_shape
    )
    torch_reference.load_jax_variables(torch_model, reference.variables)
    stepper = torch_reference.Stepper(
      torch_model.to(device),
      reference.variables['params'],
      reference.mask,
      lr=LR,
      momentum=MOMENTUM,
      weight_decay=WEIGHT_DECAY,
      autocast_dtype=autocast,
    )
    torch_step = {
      'sgd': stepper.sgd_step,
      'salun': stepper.salun_step,
      'sfron': lambda b, stepper=stepper: stepper.sfron_iteration(
        b['forget'], b['remain'], lr=LR, **SFRON
      ),
    }[kind]
    states = {name: side.init_state(kind) for name, side in sides.items()}
    inputs = {name: side.prepare(kind, batches) for name, side in sides.items()}
    with Precision(case.compute):
      torch_losses = [_losses(torch_step(to_torch(b, device))) for b in batches]
      torch_params = torch_reference.jax_tree(
        torch_model, reference.variables['params'], dict(torch_model.named_parameters())
      )
      result = {'torch_losses': torch_losses}
      for name, side in sides.items():
        losses = []
        device_batches, constants = inputs[name]
        t0 = time.perf_counter()
        for i, batch in enumerate(device_batches):
          states[name], loss = side.steps[kind](states[name], batch, constants)
          losses.append(_losses(jax.device_get(loss)))
          if i == 0:
            compile_s = time.perf_counter() - t0
        result[name] = _check_agreement(
          f'{case.name} {kind} ({name})',
          losses,
          torch_losses,
          jax.device_get(states[name].params),
          torch_params,
          case.compute,
        )
        result[name]['compile_s'] = compile_s

      def jax_runner(name, kind=kind, states=states, inputs=inputs):
        step, (device_batches, constants) = sides[name].steps[kind], inputs[name]

        def run_steps(steps):
          for _ in range(steps):
            states[name], loss = step(states[name], device_batches[0], constants)
          jax.block_until_ready((states[name], loss))

        return run_steps

      torch_batch = to_torch(batches[0], device)

      def run_torch(steps, step=torch_step, batch=torch_batch):
        for _ in range(steps):
          step(batch)
        _sync_torch(device)

      runners = {name: jax_runner(name) for name in sides}
      runners['torch'] = run_torch
      for runner in runners.values():
        runner(1)
      times = sharding.interleaved(runners, case.timed_steps, case.repeats)
    for name in sides:
      ratios = [j / t for j, t in zip(times[name], times['torch'])]
      result[name].update(
        {
          'step_s': float(np.median(times[name])),
          'time_ratio_jax_over_torch': float(np.median(ratios)),
          'time_ratio_of_minima': min(times[name]) / min(times['torch']),
          'speedup_jax_vs_torch': float(np.median([1.0 / r for r in ratios])),
        }
      )
    result['torch_step_s'] = float(np.median(times['torch']))
    result['times_s'] = times
    # The layout the main job runs by default (num_devices=-1): the faster of the two, as its
    # probe (`jaxunlearn.experiment.probe_cpu_layout`) picks.
    default = min(sides, key=lambda name: result[name]['step_s'])
    result['default_layout'] = {
      'side': default,
      'devices': len(devices) if default == 'jax' else 1,
      'time_ratio_jax_over_torch': result[default]['time_ratio_jax_over_torch'],
    }
    results[kind] = result
    sides_text = '  '.join(
      f'{name} {result[name]["step_s"] * 1e3:.2f} ms '
      f'({result[name]["time_ratio_jax_over_torch"]:.2f})'
      for name in sides
    )
    print(
      f'{case.name:26s} {kind:6s} {sides_text}  torch {result["torch_step_s"] * 1e3:.2f} ms  '
      f'default layout {default} ({result["default_layout"]["time_ratio_jax_over_torch"]:.2f}) '
      f'(loss rel diff {result["jax"]["loss_relative_difference"]:.1e}, compile '
      f'{result["jax"]["compile_s"]:.1f}s)',
      flush=True,
    )
  return results


def sfron_run(run: RunCase, device, jax_devices=None, seed: int = 0) -> dict:
  """A whole SFR-on schedule on ResNet-18, JAX then torch, twice each (cold: JAX compiles; warm).

  Returns:
    Wall times (cold and warm), the losses of both sides at the first and last iterations, and
    the ratio jax / torch of the warm times.

  Raises:
    AgreementError: when the first `AGREEMENT_STEPS` iterations' losses differ by more than the
      float32 tolerance of later steps.
  """
  import torch

  from experiments import torch_reference

  input_shape = INPUT_SHAPES['resnet18']
  kwargs = {'width': run.width}
  rng = np.random.default_rng(seed + 2)
  data = {
    source: {
      'image': rng.integers(0, 256, (n,) + input_shape, dtype=np.uint8),
      'label': rng.integers(0, NUM_CLASSES, n).astype(np.int32),
    }
    for source, n in (('forget', run.num_forget), ('remain', run.num_retain))
  }
  schedule = []
  for t in range(run.iterations):
    with_forget = t % run.forget_every == 0
    schedule.append(
      (
        with_forget,
        rng.choice(run.num_forget, run.batch, replace=False).astype(np.int32),
        rng.choice(run.num_retain, run.batch, replace=False).astype(np.int32),
      )
    )
  lr = make_schedule(OptimizerConfig(lr=LR, schedule='cosine'), run.iterations)
  lrs = [float(lr(t)) for t in range(run.iterations)]
  scales = [
    SFRON['scale'] * 0.5 * (1.0 + np.cos(np.pi * t / run.iterations)) for t in range(run.iterations)
  ]
  jax_steps = JaxSteps(
    'resnet18', input_shape=input_shape, seed=seed, model_kwargs=kwargs, devices=jax_devices
  )
  run_iteration = jax_steps.sfron_run_iteration(run.iterations)
  jax_data = jax.device_put(data, jax_steps.replicated)
  constants = jax.device_put({'mask': jax_steps.mask}, jax_steps.replicated)
  torch_data = {
    s: {
      'image': torch.from_numpy(d['image']).permute(0, 3, 1, 2).contiguous().to(device),
      'label': torch.from_numpy(d['label']).long().to(device),
    }
    for s, d in data.items()
  }
  mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)

  def run_jax():
    state, losses = jax_steps.init_state('sfron'), []
    for with_forget, f_idx, r_idx in schedule:
      state, loss = run_iteration(state, jax_data, f_idx, r_idx, constants, with_forget=with_forget)
      losses.append(loss)
    jax.block_until_ready(state)
    return [_losses(jax.device_get(loss)) for loss in losses]

  def run_torch():
    torch_model = torch_reference.create_model(
      'resnet18', num_classes=NUM_CLASSES, input_shape=input_shape, **kwargs
    )
    torch_reference.load_jax_variables(torch_model, jax_steps.variables)
    stepper = torch_reference.Stepper(
      torch_model.to(device),
      jax_steps.variables['params'],
      jax_steps.mask,
      lr=LR,
      momentum=MOMENTUM,
      weight_decay=WEIGHT_DECAY,
    )

    def batch(source, idx):
      idx = torch.from_numpy(idx).long().to(device)
      images = torch_data[source]['image'][idx].float() / 255.0
      return {'image': (images - mean) / std, 'label': torch_data[source]['label'][idx]}

    losses = []
    for t, (with_forget, f_idx, r_idx) in enumerate(schedule):
      forget = batch('forget', f_idx) if with_forget else None
      losses.append(
        stepper.sfron_iteration(
          forget, batch('remain', r_idx), lr=lrs[t], **{**SFRON, 'scale': scales[t]}
        )
      )
    _sync_torch(device)
    return [_losses(loss) for loss in losses]

  timings = {}
  with Precision('float32'):
    for label in ('cold', 'warm'):
      for side, fn in (('jax', run_jax), ('torch', run_torch)):
        t0 = time.perf_counter()
        losses = fn()
        timings[f'{side}_{label}_s'] = time.perf_counter() - t0
        timings[f'{side}_losses'] = losses
  rel = max(
    relative_difference(a, b)
    for a, b in zip(
      timings['jax_losses'][:AGREEMENT_STEPS], timings['torch_losses'][:AGREEMENT_STEPS]
    )
  )
  if not rel <= TOLERANCES['float32'][1]:
    raise AgreementError(
      f'SFR-on run: first iterations differ by {rel:.2e} relative: jax '
      f'{timings["jax_losses"][:AGREEMENT_STEPS]}, torch '
      f'{timings["torch_losses"][:AGREEMENT_STEPS]}.'
    )
  out = {
    'case': dataclasses.asdict(run),
    'loss_relative_difference_first': rel,
    'jax_losses_first_last': [timings['jax_losses'][0], timings['jax_losses'][-1]],
    'torch_losses_first_last': [timings['torch_losses'][0], timings['torch_losses'][-1]],
    **{k: v for k, v in timings.items() if k.endswith('_s')},
  }
  out['time_ratio_jax_over_torch_warm'] = out['jax_warm_s'] / out['torch_warm_s']
  print(
    f'SFR-on run ResNet-18 (width {run.width}) batch {run.batch}, {run.iterations} '
    f'iterations: jax {out["jax_cold_s"]:.1f}s cold / {out["jax_warm_s"]:.1f}s warm, torch '
    f'{out["torch_cold_s"]:.1f}s cold / {out["torch_warm_s"]:.1f}s warm, jax/torch (warm) '
    f'{out["time_ratio_jax_over_torch_warm"]:.2f}',
    flush=True,
  )
  return out


def _git(*args: str) -> str:
  try:
    return subprocess.run(
      ['git', *args], cwd=os.path.dirname(__file__), capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ''


def environment(device, jax_devices) -> dict:
  """Library versions, device, thread settings, git commit and command, for the JSON."""
  import torch

  cpu_model = ''
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      cpu_model = next((line.split(':', 1)[1].strip() for line in f if 'model name' in line), '')
  return {
    'jax_devices': len(jax_devices),
    'command': ' '.join(
      [os.path.basename(sys.executable), '-m', 'experiments.benchmark'] + sys.argv[1:]
    ),
    'git_commit': _git('rev-parse', 'HEAD'),
    'git_dirty': bool(_git('status', '--porcelain', '--untracked-files=no')),
    'versions': {
      'python': platform.python_version(),
      **{
        name: importlib.metadata.version(name)
        for name in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'torch')
      },
    },
    'device': {
      'jax_platform': jax.default_backend(),
      'jax_device': jax.devices()[0].device_kind,
      'torch_device': str(device),
      'torch_device_name': (
        torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_model
      ),
      'host': platform.machine(),
      'cpus': sharding.schedulable_cores(),
    },
    'threads': {
      'torch_num_threads': torch.get_num_threads(),
      'torch_mkldnn_available': torch.backends.mkldnn.is_available(),
      'torch_cudnn_benchmark': torch.backends.cudnn.benchmark,
    },
    'env': {
      k: os.environ.get(k, '')
      for k in ('XLA_FLAGS', 'OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'CUDA_VISIBLE_DEVICES')
    },
  }


def print_table(results: dict) -> None:
  print(
    f'\n{"case":26s} {"step":6s} {"side":12s} {"jax ms":>9s} {"torch ms":>9s} '
    f'{"jax/torch":>9s} {"speedup":>8s} {"min/min":>8s}'
  )
  for case, kinds in results.items():
    for kind, r in kinds.items():
      for side in ('jax', 'jax_1device'):
        if side in r:
          j = r[side]
          print(
            f'{case:26s} {kind:6s} {side:12s} {j["step_s"] * 1e3:9.2f} '
            f'{r["torch_step_s"] * 1e3:9.2f} {j["time_ratio_jax_over_torch"]:9.2f} '
            f'{j["speedup_jax_vs_torch"]:8.2f} {j["time_ratio_of_minima"]:8.2f}'
          )
  print(
    'jax/torch: median over rounds of the time ratio (< 1: jaxunlearn faster); speedup: its '
    'inverse; min/min: the ratio of the fastest rounds (less sensitive to a loaded machine); '
    'jax_1device: the JAX step on one device, for the gain of the data parallelism; the main '
    "job's default layout is the faster of jax and jax_1device (its probe's rule)."
  )


def run(config, *, steps: int | None = None, out: str | None = None) -> dict:
  """The side-by-side benchmark of `config` (see experiments/configs/benchmark.py).

  Args:
    config: the benchmark config: device_preset, reference_models, reference_kinds,
      reference_repeats, cpu_devices, cpu_single_device_baseline, sfron_run.
    steps: timed steps per round, overriding the preset's.
    out: the JSON path; by default experiments/benchmarks/torch_reference_{preset}_{time}.json.

  Returns:
    The payload written to the JSON.
  """
  import torch

  # Both before JAX initialises its backends. On a GPU, torch shares the device's memory, which
  # JAX would otherwise preallocate.
  if config.cpu_devices:
    jax.config.update('jax_num_cpu_devices', config.cpu_devices)
  else:
    sharding.use_one_cpu_device_per_core()
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  preset_name = config.device_preset
  if preset_name == 'auto':
    preset_name = 'cpu' if jax.default_backend() == 'cpu' else 'gpu'
  if preset_name not in PRESETS:
    raise ValueError(
      f'device_preset={config.device_preset!r}: allowed: auto, {", ".join(PRESETS)}.'
    )
  on_gpu = jax.default_backend() == 'gpu'
  if preset_name == 'gpu' and not on_gpu:
    raise ValueError(
      f'device_preset=gpu: JAX runs on {jax.default_backend()}, not a GPU; its sizes '
      'would take hours there.'
    )
  if on_gpu and not torch.cuda.is_available():
    raise RuntimeError('JAX runs on a GPU but torch has no CUDA: the two would not compare.')
  device = torch.device('cuda' if on_gpu else 'cpu')
  if on_gpu:
    # XLA autotunes its convolutions; cuDNN's autotuner is torch's counterpart.
    torch.backends.cudnn.benchmark = True
  else:
    # XLA:CPU runs one intra-op thread per schedulable core, however many devices it exposes.
    torch.set_num_threads(sharding.schedulable_cores())
  # The torch side runs on one device; so does the JAX side on a GPU.
  jax_devices = jax.devices() if not on_gpu else jax.devices()[:1]
  preset = PRESETS[preset_name]
  models = [m for m in config.reference_models.split(',') if m]
  kinds = [k for k in config.reference_kinds.split(',') if k]
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    raise ValueError(f'reference_kinds: unknown {unknown}; allowed: {", ".join(KINDS)}.')
  cases = []
  for case in preset['cases']:
    if models and case.model not in models:
      continue
    selected = tuple(k for k in case.kinds if not kinds or k in kinds)
    if not selected:
      continue
    changes = {'kinds': selected}
    if steps:
      changes['timed_steps'] = steps
    if config.reference_repeats:
      changes['repeats'] = config.reference_repeats
    cases.append(dataclasses.replace(case, **changes))
  if out is None:
    stamp = datetime.datetime.now(datetime.UTC).strftime('%Y%m%d-%H%M%S')
    out = os.path.join(OUT_DIR, f'torch_reference_{preset_name}_{stamp}.json')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  load_before = os.getloadavg()
  started = time.perf_counter()
  results = {}
  payload = {
    'preset': preset_name,
    'cases': [dataclasses.asdict(c) for c in cases],
    'note': (
      'CPU preset: ResNet-18 and ViT-Tiny at batch 16 with 2 timed steps x 3 rounds '
      'to finish in a few minutes on 2 cores; the CNN at batch 128.'
      if preset_name == 'cpu'
      else 'GPU preset.'
    ),
    'hyperparameters': {
      'lr': LR,
      'momentum': MOMENTUM,
      'weight_decay': WEIGHT_DECAY,
      'mask_density': MASK_DENSITY,
      'forget_fraction': FORGET_FRACTION,
      'sfron': SFRON,
      'agreement_steps': AGREEMENT_STEPS,
    },
    'jax_side': "the library's step functions",
    'results': results,
    **environment(device, jax_devices),
  }

  def write(complete: bool):
    payload['complete'] = complete
    payload['total_s'] = time.perf_counter() - started
    payload['load_average'] = {'before': load_before, 'after': os.getloadavg()}
    files.write_json(out, payload)

  # Written after every case, so that a run cut short by a time limit keeps what it measured.
  for case in cases:
    results[case.name] = compare_case(
      case, device, jax_devices, single_device_baseline=config.cpu_single_device_baseline
    )
    write(complete=False)
  if config.sfron_run:
    payload['sfron_run'] = sfron_run(preset['run'], device, jax_devices)
  write(complete=True)
  print_table(results)
  print(
    f'1-minute load average {load_before[0]:.1f} before, {payload["load_average"]["after"][0]:.1f}'
    f' after, on {sharding.schedulable_cores()} cores; JAX on {len(jax_devices)} '
    f'{jax_devices[0].platform} device(s).'
  )
  print(f'wrote {out}')
  return payload
