"""Step timings of every method on a fixed model and batch: compile time, steps/s and examples/s
per step kind, and each method's time per step as a ratio to Retrain's supervised step (ratios
compare across machines; absolute times do not). Also how two implementations of the same steps
compare: how far their losses and weights differ, and their times per step as ratios."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import sharding as sharding_lib
from jaxunlearn.config import Config
from jaxunlearn.data.device import BatchSampler, gather_images
from jaxunlearn.experiment import Experiment
from jaxunlearn.loop import Program, StepKind, compile_program, run_many
from jaxunlearn.methods import Plan, registry
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state, supervised_step


def time_plan(plan: Plan, experiment: Experiment, seed: int, steps: int) -> dict:
  """Compile time and throughput of each step kind of `plan`, on fixed batches.

  Args:
    plan: what a method's build returned.
    experiment: the experiment (data on device, mesh).
    seed: the seed of the batches and keys.
    steps: timed steps per step kind, after one warm-up step.

  Returns:
    {'compile_s': seconds, 'kinds': {kind: {'step_s', 'steps_per_s', 'examples_per_s'}}}.
  """
  program, state = plan.program, sharding_lib.replicate(plan.state, experiment.mesh)
  constants = sharding_lib.replicate(plan.constants, experiment.mesh)
  t0 = time.perf_counter()
  compiled, _ = compile_program(
    program, state, experiment.train, experiment.mesh, seed, augment=True, constants=constants
  )
  out = {'compile_s': time.perf_counter() - t0, 'kinds': {}}
  base_key = jax.random.key(seed)
  for name, kind in program.kinds.items():
    batch = {
      slot: BatchSampler(experiment.train.sources[source], program.batch_size, seed, source).batch(
        0
      )
      for slot, source in kind.slots.items()
    }
    batch = sharding_lib.shard_global_batch(batch, experiment.mesh)
    args = (constants, experiment.train.images, experiment.train.labels, batch, base_key)
    run_state, _ = compiled[name](state, *args)
    jax.block_until_ready(run_state)
    t0 = time.perf_counter()
    for _ in range(steps):
      run_state, metrics = compiled[name](run_state, *args)
    jax.block_until_ready((run_state, metrics))
    seconds = (time.perf_counter() - t0) / steps
    out['kinds'][name] = {
      'step_s': seconds,
      'steps_per_s': 1.0 / seconds,
      'examples_per_s': program.batch_size * max(len(kind.slots), 1) / seconds,
    }
  return out


def benchmark(
  experiment: Experiment,
  rows: list[tuple[str, str, Config]],
  steps: int,
  seed: int = 0,
  equal_examples: bool = False,
) -> dict:
  """Times Retrain's supervised step and every (row, method, config) of `rows` from a freshly
  initialised model of the experiment.

  A step kind with n slots (e.g. a D_r and a D_f batch) sees n times the examples of Retrain's
  step at the same batch size. With `equal_examples`, each such row is also timed at batch size
  B // n per slot (B its own batch size), so that its step takes as many examples as a
  one-slot step at B: the timing goes under 'equal_examples', with its ratio to Retrain's step.

  Returns:
    {'retrain_step': timing, row: timing}, each as `time_plan` gives it.
  """
  fns, variables = experiment.model(seed)
  tx = make_optimizer(experiment.training.optimizer, 1000)
  reference = Plan(
    Program(
      {'train': StepKind(supervised_step(fns, tx), {'train': 'retain'})},
      ['train'],
      experiment.training.batch_size,
    ),
    create_state(variables, {'main': tx}),
    {},
  )
  results = {'retrain_step': time_plan(reference, experiment, seed, steps)}
  results['retrain_step']['forward_s'] = forward_seconds(experiment, fns, variables, steps)
  ref_step = results['retrain_step']['kinds']['train']['step_s']
  print(f'retrain step: {ref_step * 1e3:.1f} ms', flush=True)
  for row, method, cfg in rows:
    ctx = experiment.context(fns, variables, seed=seed, batch_size=cfg.batch_size)
    t0 = time.perf_counter()
    plan = registry.get(method).build(ctx, cfg)
    jax.block_until_ready((plan.state, plan.constants))
    prepare_s = time.perf_counter() - t0
    timing = time_plan(plan, experiment, seed, steps)
    timing['prepare_s'] = prepare_s
    counts = {kind: list(plan.program.schedule).count(kind) for kind in plan.program.kinds}
    timing['steps'] = counts
    timing['estimated_rte_s'] = prepare_s + sum(
      counts[kind] * timing['kinds'][kind]['step_s'] for kind in counts
    )
    for kind in timing['kinds'].values():
      kind['step_time_vs_retrain_step'] = kind['step_s'] / ref_step
    slots = max(len(kind.slots) for kind in plan.program.kinds.values())
    if equal_examples and slots > 1:
      ctx = experiment.context(fns, variables, seed=seed, batch_size=cfg.batch_size // slots)
      equal = time_plan(registry.get(method).build(ctx, cfg), experiment, seed, steps)
      for kind in equal['kinds'].values():
        kind['step_time_vs_retrain_step'] = kind['step_s'] / ref_step
      timing['equal_examples'] = {'batch_size_per_slot': cfg.batch_size // slots, **equal}
    results[row] = timing
    print(
      f'{row}: prepare {prepare_s:.2f}s compile {timing["compile_s"]:.2f}s '
      + ' '.join(
        f'{k} {v["step_s"] * 1e3:.1f}ms ({v["examples_per_s"]:.0f} ex/s)'
        for k, v in timing['kinds'].items()
      ),
      flush=True,
    )
    if 'equal_examples' in timing:
      equal = timing['equal_examples']
      print(
        f'{row} at {equal["batch_size_per_slot"]} per slot: '
        + ' '.join(
          f'{k} {v["step_s"] * 1e3:.1f}ms ({v["step_time_vs_retrain_step"]:.2f}x retrain step)'
          for k, v in equal['kinds'].items()
        ),
        flush=True,
      )
  return results


def forward_seconds(experiment: Experiment, fns, variables: dict, steps: int) -> float:
  """Seconds of one eval-mode forward pass of the model on a training batch (what a frozen
  teacher's pass costs inside a step), the median of `steps` timed calls after a warm-up."""
  batch = experiment.train.images[: experiment.training.batch_size]
  images = jax.jit(
    lambda x: gather_images(x, experiment.info, jnp.arange(experiment.training.batch_size))
  )(batch)
  forward = jax.jit(lambda v, x: fns.apply(v, x, train=False)[0])
  jax.block_until_ready(forward(variables, images))
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(forward(variables, images))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def many_models_speed(
  experiment: Experiment, model_mesh, num_models: list[int], steps: int, seed: int = 0
) -> dict:
  """Time per training step of K models in one program (`loop.run_many`, on `model_mesh`)
  against K single-model steps one after another, for each K in `num_models`: vmapped, and on
  CPU also unrolled (the models one after another inside the compiled step).

  Returns:
    {'K=k': {'sequential_step_s', form: {'step_s', 'compile_s', 'speedup'}}}, and the single
    step's time under 'single_step_s'.
  """

  fns, variables = experiment.model(seed)
  tx = make_optimizer(experiment.training.optimizer, 1000)
  program = Program(
    {'train': StepKind(supervised_step(fns, tx), {'train': 'retain'})},
    ['train'] * steps,
    experiment.training.batch_size,
  )
  single = time_plan(
    Plan(program, create_state(variables, {'main': tx}), {}), experiment, seed, steps
  )
  single_s = single['kinds']['train']['step_s']
  out = {'single_step_s': single_s}
  data = experiment.on_mesh(model_mesh).train
  forms = ('vmap', 'unroll') if jax.default_backend() == 'cpu' else ('vmap',)
  for k in num_models:
    states = [create_state(experiment.model(s)[1], {'main': tx}) for s in range(k)]
    entry = {'sequential_step_s': k * single_s}
    for form in forms:
      result = run_many(
        program, states, data, mesh=model_mesh, seeds=list(range(k)), log_every=10**9, form=form
      )
      step_s = result.run_seconds / steps
      entry[form] = {
        'step_s': step_s,
        'compile_s': result.compile_seconds,
        'speedup': k * single_s / step_s,
      }
      print(
        f'K={k} {form}: {step_s * 1e3:.1f} ms per step of all K (compile '
        f'{result.compile_seconds:.1f} s); {k} single steps {k * single_s * 1e3:.1f} ms; '
        f'speedup {k * single_s / step_s:.2f}x',
        flush=True,
      )
    out[f'K={k}'] = entry
  return out


def relative_difference(a: Sequence[float], b: Sequence[float]) -> float:
  """max_i |a_i - b_i| / max(|b_i|, 1e-6) over the pairs not both NaN (NaN marks no value)."""
  diffs = [
    abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b) if not (np.isnan(x) and np.isnan(y))
  ]
  return max(diffs) if diffs else 0.0


def parameter_difference(params: dict, reference: dict) -> float:
  """||params - reference|| / ||reference|| over all leaves of two trees of the same structure."""
  diff = sum(
    float(np.sum((np.asarray(a, np.float64) - b) ** 2))
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference))
  )
  norm = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in jax.tree.leaves(reference))
  return float(np.sqrt(diff / norm))


def time_ratios(times: Mapping[str, Sequence[float]], name: str, reference: str) -> dict:
  """Runner `name`'s time per step against `reference`'s, from the rounds of
  `sharding.interleaved`.

  Returns:
    {'step_s': the median seconds per step of `name`, 'ratio': the median over rounds of the
    round's time ratio name / reference, 'ratio_of_minima': the ratio of the fastest rounds (less
    sensitive to a loaded machine), 'speedup': the median over rounds of reference / name}.
  """
  ratios = [a / b for a, b in zip(times[name], times[reference])]
  return {
    'step_s': float(np.median(times[name])),
    'ratio': float(np.median(ratios)),
    'ratio_of_minima': min(times[name]) / min(times[reference]),
    'speedup': float(np.median([1.0 / r for r in ratios])),
  }
