"""One comparison of `experiments/reference_benchmark.py`: the JAX side (`reference_jax`) and the
torch side (`torch_steps`) agree on their losses, then are timed alternately.

Per case (model, batch size, compute dtype) and step kind, both sides start from the same weights,
run `AGREEMENT_STEPS` steps on the same batches and must agree on every loss (relative
`TOLERANCES`) or the comparison stops with `AgreementError`: a wrong re-statement cannot yield a
flattering ratio. The first loss (before any update) checks the model tightly; the later ones the
update, where float32 rounding differences grow. Then the two are timed on one fixed batch after a
warm-up step, interleaved (`jaxunlearn.sharding.interleaved`: `repeats` rounds of `timed_steps`
steps each, synchronised).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
import torch

from experiments import reference_jax, torch_reference, torch_steps
from experiments.reference_jax import (
  AGREEMENT_STEPS,
  INPUT_SHAPES,
  LR,
  MOMENTUM,
  WEIGHT_DECAY,
  Case,
  JaxSteps,
)
from jaxunlearn import benchmarking, sharding
from jaxunlearn.config import OptimizerConfig
from jaxunlearn.optim import make_schedule

# Relative loss agreement (first step, later steps). float32 differs only by summation order;
# tf32 and bfloat16 round inputs differently on the two sides (and autocast keeps some ops in
# float32 that Flax runs in bfloat16).
TOLERANCES = {'float32': (1e-5, 1e-3), 'tf32': (5e-3, 2e-2), 'bfloat16': (2e-2, 5e-2)}


class AgreementError(RuntimeError):
  """The JAX and torch steps disagree: the re-statement is wrong, so no ratio is written."""


def check_agreement(
  label: str, jax_losses, torch_losses, jax_params, torch_params, compute: str
) -> dict:
  """The relative differences of one JAX side from torch; raises AgreementError beyond the
  tolerances of `compute`."""
  first = benchmarking.relative_difference(jax_losses[0], torch_losses[0])
  rel = max(benchmarking.relative_difference(a, b) for a, b in zip(jax_losses, torch_losses))
  params_diff = benchmarking.parameter_difference(jax_params, torch_params)
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


def _agreement_steps(side: JaxSteps, kind: str, state, inputs):
  """Runs the agreement batches through one JAX side; returns its state and its losses, with
  the compile time (the first step's wall time)."""
  device_batches, constants = inputs
  losses = []
  t0 = time.perf_counter()
  for i, batch in enumerate(device_batches):
    state, loss = side.steps[kind](state, batch, constants)
    losses.append(reference_jax.as_floats(jax.device_get(loss)))
    if i == 0:
      compile_s = time.perf_counter() - t0
  return state, losses, compile_s


def _agree(case: Case, kind: str, sides: dict, states, inputs, stepper, batches, device) -> dict:
  """Both sides' agreement steps on `batches`, advancing `states`: the agreement records."""
  reference = sides['jax']
  step = torch_steps.kind_step(stepper, kind)
  torch_losses = [reference_jax.as_floats(step(torch_steps.to_torch(b, device))) for b in batches]
  torch_params = torch_reference.jax_tree(
    stepper.model, reference.variables['params'], dict(stepper.model.named_parameters())
  )
  result = {'torch_losses': torch_losses}
  for name, side in sides.items():
    label = f'{case.name} {kind} ({name})'
    states[name], losses, compile_s = _agreement_steps(side, kind, states[name], inputs[name])
    params = jax.device_get(states[name].params)
    result[name] = check_agreement(label, losses, torch_losses, params, torch_params, case.compute)
    result[name]['compile_s'] = compile_s
  return result


def _time(case: Case, kind: str, sides: dict, states, inputs, stepper, batch: dict, device):
  """Seconds per step of every side, one warm-up step each, then interleaved rounds."""
  runners = {
    name: side.runner(kind, states[name], inputs[name][0][0], inputs[name][1])
    for name, side in sides.items()
  }
  step = torch_steps.kind_step(stepper, kind)
  runners['torch'] = torch_steps.runner(step, torch_steps.to_torch(batch, device), device)
  for run in runners.values():
    run(1)
  return sharding.interleaved(runners, case.timed_steps, case.repeats)


def _add_timings(result: dict, times: dict, sides: dict, num_devices: int) -> None:
  """Each side's time per step and its ratios to torch, every round's times, and the layout the
  main job runs by default (num_devices=-1): the faster side, as its probe
  (`jaxunlearn.experiment.probe_cpu_layout`) picks."""
  for name in sides:
    ratios = benchmarking.time_ratios(times, name, 'torch')
    result[name].update(
      {
        'step_s': ratios['step_s'],
        'time_ratio_jax_over_torch': ratios['ratio'],
        'time_ratio_of_minima': ratios['ratio_of_minima'],
        'speedup_jax_vs_torch': ratios['speedup'],
      }
    )
  result['torch_step_s'] = float(np.median(times['torch']))
  result['times_s'] = times
  default = min(sides, key=lambda name: result[name]['step_s'])
  result['default_layout'] = {
    'side': default,
    'devices': num_devices if default == 'jax' else 1,
    'time_ratio_jax_over_torch': result[default]['time_ratio_jax_over_torch'],
  }


def _print_kind(case: Case, kind: str, result: dict, sides: dict) -> None:
  sides_text = '  '.join(
    f'{name} {result[name]["step_s"] * 1e3:.2f} ms ({result[name]["time_ratio_jax_over_torch"]:.2f})'
    for name in sides
  )
  default = result['default_layout']
  print(
    f'{case.name:26s} {kind:6s} {sides_text}  torch {result["torch_step_s"] * 1e3:.2f} ms  '
    f'default layout {default["side"]} ({default["time_ratio_jax_over_torch"]:.2f}) '
    f'(loss rel diff {result["jax"]["loss_relative_difference"]:.1e}, compile '
    f'{result["jax"]["compile_s"]:.1f}s)',
    flush=True,
  )


def compare_kind(case: Case, kind: str, sides: dict, device, seed: int = 0) -> dict:
  """Agreement check and interleaved timing of one step kind of `case` (see `compare_case`)."""
  input_shape = INPUT_SHAPES[case.model]
  rng = np.random.default_rng(seed + 1)
  batches = [
    reference_jax.kind_inputs(kind, rng, case.batch, input_shape) for _ in range(AGREEMENT_STEPS)
  ]
  reference = sides['jax']
  stepper = torch_steps.make_stepper(
    case.model,
    input_shape,
    reference.variables,
    reference.mask,
    device,
    lr=LR,
    momentum=MOMENTUM,
    weight_decay=WEIGHT_DECAY,
    autocast_dtype=torch.bfloat16 if case.compute == 'bfloat16' else None,
  )
  states = {name: side.init_state(kind) for name, side in sides.items()}
  inputs = {name: side.prepare(kind, batches) for name, side in sides.items()}
  with torch_steps.Precision(case.compute):
    result = _agree(case, kind, sides, states, inputs, stepper, batches, device)
    times = _time(case, kind, sides, states, inputs, stepper, batches[0], device)
  _add_timings(result, times, sides, len(reference.mesh.devices.flat))
  _print_kind(case, kind, result, sides)
  return result


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
    the compile time, the time per step and its ratios to torch; every round's times; and the
    default layout.

  Raises:
    AgreementError: when a loss, or the parameters after the agreement steps, differ by more
      than the compute dtype's tolerance.
  """
  devices = list(jax_devices or jax.devices()[:1])
  build = lambda devs: JaxSteps(
    case.model, input_shape=INPUT_SHAPES[case.model], seed=seed, compute=case.compute, devices=devs
  )
  sides = {'jax': build(devices)}
  if single_device_baseline and len(devices) > 1:
    sides['jax_1device'] = build(devices[:1])
  return {kind: compare_kind(case, kind, sides, device, seed) for kind in case.kinds}


def _sfron_run_rates(run: reference_jax.RunCase) -> tuple[list[float], list[float]]:
  """The torch side's learning rate and forget scale at each iteration of the whole run: cosine
  decay of both, as the JAX side's schedule and fade."""
  lr = make_schedule(OptimizerConfig(lr=LR, schedule='cosine'), run.iterations)
  scale = reference_jax.SFRON['scale']
  return (
    [float(lr(t)) for t in range(run.iterations)],
    [scale * 0.5 * (1.0 + np.cos(np.pi * t / run.iterations)) for t in range(run.iterations)],
  )


def _run_sides(run: reference_jax.RunCase, device, jax_devices, seed: int) -> dict:
  """``run_all()`` of each side for the whole SFR-on run on the same data and schedule."""
  rng = np.random.default_rng(seed + 2)
  data = reference_jax.run_data(run, rng)
  schedule = reference_jax.run_schedule(run, rng)
  lrs, scales = _sfron_run_rates(run)
  shape, kwargs = INPUT_SHAPES['resnet18'], {'width': run.width}
  jax_steps = JaxSteps(
    'resnet18', input_shape=shape, seed=seed, model_kwargs=kwargs, devices=jax_devices
  )
  jax_run = jax_steps.sfron_run(run, data, schedule)
  hyper = dict(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, model_kwargs=kwargs)
  make = lambda: torch_steps.make_stepper(
    'resnet18', shape, jax_steps.variables, jax_steps.mask, device, **hyper
  )
  return {'jax': jax_run, 'torch': torch_steps.sfron_run(make, data, schedule, lrs, scales, device)}


def sfron_run(run: reference_jax.RunCase, device, jax_devices=None, seed: int = 0) -> dict:
  """A whole SFR-on schedule on ResNet-18, JAX then torch, twice each (cold: JAX compiles; warm).

  Returns:
    Wall times (cold and warm), the losses of both sides at the first and last iterations, and
    the ratio jax / torch of the warm times.

  Raises:
    AgreementError: when the first `AGREEMENT_STEPS` iterations' losses differ by more than the
      float32 tolerance of later steps.
  """
  sides = _run_sides(run, device, jax_devices, seed)
  timings = {}
  with torch_steps.Precision('float32'):
    for label in ('cold', 'warm'):
      for side, run_all in sides.items():
        t0 = time.perf_counter()
        losses = run_all()
        timings[f'{side}_{label}_s'] = time.perf_counter() - t0
        timings[f'{side}_losses'] = losses
  first = {side: timings[f'{side}_losses'][:AGREEMENT_STEPS] for side in sides}
  rel = max(benchmarking.relative_difference(a, b) for a, b in zip(first['jax'], first['torch']))
  if not rel <= TOLERANCES['float32'][1]:
    raise AgreementError(
      f'SFR-on run: first iterations differ by {rel:.2e} relative: jax {first["jax"]}, torch '
      f'{first["torch"]}.'
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
