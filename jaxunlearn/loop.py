"""The one training loop that original training, retraining and every unlearning method run on.

A method is a `Program`: named step kinds and a schedule naming the kind of every global step. A
step kind is a pure function ``(state, batch, key, constants) -> (state, metrics)`` plus the data
source each slot of its batch draws from (``{'forget': 'forget', 'remain': 'retain'}``, say).
``state`` is what the run changes (and what checkpoints hold); ``constants`` is what is fixed for
the run (a frozen teacher, a mask, fixed random labels), an argument of the compiled step that is
never written to a checkpoint. The loop

* keeps the datasets on device and gathers each batch by index inside the jitted step, followed by
  the dataset's preprocessing (augmentation keyed by the step's PRNG key);
* compiles each step kind once, ahead of time, and reports the compile time apart from run time;
* draws batches from per-source reshuffled epochs that depend only on (seed, source, draw number),
  and derives every key from (seed, step), so a run resumed from a checkpoint continues exactly;
* shards batches over the mesh's ``data`` axis and replicates the state;
* never syncs with the host inside a step: metrics are fetched only when a progress line is printed.

The last partial batch of an epoch is padded; padded rows get ``weight`` 0 and every loss is a
weighted mean, so a pass over D_f covers each example exactly once at a fixed shape.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxunlearn import sharding as sharding_lib
from jaxunlearn.data.device import BatchSampler, DeviceData, gather_batch
from jaxunlearn.state import TrainState

StepFn = Callable[[TrainState, dict, jax.Array, Any], tuple[TrainState, dict]]

# Steps dispatched ahead of the host. PjRt's CPU client blocks the dispatching thread once a
# device has 32 computations in flight; with a collective across CPU devices (data parallelism
# over one device per core) the launch of a peer's share of a step can then wait behind it, and
# the all-reduce's rendezvous times out and aborts the process. A few steps in flight keep the
# devices busy without it (tests/test_loop.py runs the case that aborted).
MAX_STEPS_IN_FLIGHT = 8


@dataclasses.dataclass(frozen=True)
class StepKind:
  """A pure step and the data source of each slot of its batch."""

  fn: StepFn
  slots: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Program:
  """Step kinds and the kind of every global step, in order."""

  kinds: Mapping[str, StepKind]
  schedule: Sequence[str]
  batch_size: int

  def __post_init__(self):
    unknown = sorted(set(self.schedule) - set(self.kinds))
    if unknown:
      raise ValueError(f'schedule names unknown step kinds {unknown}; known: {sorted(self.kinds)}')


class NonFiniteLoss(RuntimeError):
  """A run's loss became nan or inf; `step` is the first such global step (1-based count of steps
  done). No checkpoint after it was written."""

  def __init__(self, name: str, step: int, metric: str):
    super().__init__(
      f'{name}: {metric} became non-finite at step {step}; stopped there, and the '
      'last checkpoint (if any) holds the weights before it.'
    )
    self.step = step


@dataclasses.dataclass
class RunResult:
  state: TrainState
  history: list[dict]
  compile_seconds: float
  run_seconds: float
  steps_run: int
  step_metrics: list[dict] | None = None  # every step's metrics (run_many, keep_metrics)


class Checkpointer(Protocol):
  """What the loop needs from a checkpoint manager (see `jaxunlearn.checkpoint`)."""

  def restore_latest(self, target: TrainState) -> TrainState | None: ...
  def save(self, state: TrainState, metrics: dict) -> None: ...
  def should_save(self, step: int) -> bool: ...
  def wait(self) -> None: ...


def run(
  program: Program,
  state: TrainState,
  data: DeviceData,
  *,
  mesh,
  seed: int,
  constants: Any = None,
  checkpointer: Checkpointer | None = None,
  augment: bool = True,
  log_every: int = 50,
  eval_fn: Callable[[TrainState], dict] | None = None,
  name: str = 'train',
  stop_after: int | None = None,
  stop_on_nonfinite: bool = False,
) -> RunResult:
  """Runs `program` from `state` (or from the latest checkpoint) to the end of its schedule.

  `constants` (a PyTree, default empty) is handed to every step and never checkpointed. `eval_fn`
  (host-side, outside the steps) is called at each checkpoint; its metrics go with the checkpoint
  (the best-by-metric one is kept). `stop_after` ends the run early after that many steps in this
  call (used to test resumption). With `stop_on_nonfinite`, the 'loss' metric of every step is
  checked (when a progress line is printed and before each checkpoint, so no host sync is added
  inside a step) and a nan or inf raises `NonFiniteLoss` naming the step, before a checkpoint of
  the bad weights could be written.
  """
  sharding_lib.check_batch_size(program.batch_size, mesh)
  state = sharding_lib.replicate(state, mesh)
  constants = sharding_lib.replicate({} if constants is None else constants, mesh)
  if checkpointer is not None:
    restored = checkpointer.restore_latest(state)
    if restored is not None:
      state = restored
  start = int(jax.device_get(state.step))
  total = len(program.schedule)
  samplers = {
    source: BatchSampler(positions, program.batch_size, seed, source)
    for source, positions in data.sources.items()
  }
  draws = _draw_offsets(program, start)
  base_key = jax.random.key(seed)
  compiled, compile_seconds = compile_program(
    program,
    state,
    data,
    mesh,
    seed,
    augment,
    constants=constants,
    kinds=set(program.schedule[start:]),
  )

  def draw(kind: StepKind) -> dict:
    batch = {}
    for slot, source in kind.slots.items():
      batch[slot] = samplers[source].batch(draws[source])
      draws[source] += 1
    return sharding_lib.shard_global_batch(batch, mesh)

  def execute(kind_name, state, batch):
    return compiled[kind_name](state, constants, data.images, data.labels, batch, base_key)

  unchecked = []

  def saving(done: int) -> bool:
    return checkpointer is not None and (checkpointer.should_save(done) or done == total)

  def before_line(done: int, metrics, line: bool) -> None:
    nonlocal unchecked
    if stop_on_nonfinite:
      unchecked.append((done, metrics))
      if saving(done) or line:
        _check_finite(unchecked, name)
        unchecked = []

  def after_step(done: int, state) -> None:
    if saving(done):
      checkpointer.save(state, eval_fn(state) if eval_fn else {})

  state, history, run_seconds, steps_run = _host_loop(
    program,
    state,
    start,
    draw,
    execute,
    examples_per_slot=program.batch_size,
    log_every=log_every,
    name=f'[{name}]',
    before_line=before_line,
    after_step=after_step,
    stop_after=stop_after,
  )
  if checkpointer is not None:
    checkpointer.wait()
  return RunResult(state, history, compile_seconds, run_seconds, steps_run)


def _host_loop(
  program: Program,
  state,
  start: int,
  draw: Callable[[StepKind], dict],
  execute: Callable[[str, Any, dict], tuple[Any, dict]],
  *,
  examples_per_slot: int,
  log_every: int,
  name: str,
  before_line: Callable[[int, dict, bool], None] | None = None,
  after_step: Callable[[int, Any], None] | None = None,
  stop_after: int | None = None,
):
  """The host side both drivers share: from global step `start` to the end of the schedule,
  draws each step's batch (`draw`), runs its compiled step (`execute`), prints a progress line
  every `log_every` steps and at the end (metrics fetched only then; examples/s counts every
  batch slot of a step, `examples_per_slot` examples each), waits for the step
  `MAX_STEPS_IN_FLIGHT` back before dispatching more (between steps, never inside one), and
  calls the hooks:
  `before_line(done, metrics, line)` after each step, before its progress line if any, and
  `after_step(done, state)` after it. Stops early after `stop_after` steps in this call.

  Returns:
    (state, history of progress records, run seconds, steps run).
  """
  total = len(program.schedule)
  history, pending = [], []
  run_start = last_time = time.perf_counter()
  steps_run, examples = 0, 0
  in_flight = collections.deque()
  for step in range(start, total):
    kind_name = program.schedule[step]
    state, metrics = execute(kind_name, state, draw(program.kinds[kind_name]))
    in_flight.append(metrics)
    if len(in_flight) > MAX_STEPS_IN_FLIGHT:
      jax.block_until_ready(in_flight.popleft())
    pending.append((kind_name, metrics))
    examples += examples_per_slot * max(len(program.kinds[kind_name].slots), 1)
    steps_run += 1
    done = step + 1
    line = done % log_every == 0 or done == total
    if before_line is not None:
      before_line(done, metrics, line)
    if line:
      now = time.perf_counter()
      record = _summarise(
        pending,
        done,
        total,
        now - last_time,
        examples,
        now - run_start,
        steps_run,
      )
      print(f'{name} {_format(record)}', flush=True)
      history.append(record)
      pending, last_time, examples = [], now, 0
    if after_step is not None:
      after_step(done, state)
    if stop_after is not None and steps_run >= stop_after:
      break
  jax.block_until_ready(state)
  return state, history, time.perf_counter() - run_start, steps_run


def _check_finite(entries: list[tuple[int, dict]], name: str) -> None:
  """Raises NonFiniteLoss at the first (step, metrics) entry whose losses are not finite."""
  values = jax.device_get([m for _, m in entries])
  for (done, _), metrics in zip(entries, values):
    for key, value in sorted(metrics.items()):
      if 'loss' in key and not np.all(np.isfinite(value)):
        raise NonFiniteLoss(name, done, key)


def _draw_offsets(program: Program, start: int) -> dict[str, int]:
  draws: dict[str, int] = {}
  for kind in program.kinds.values():
    for source in kind.slots.values():
      draws.setdefault(source, 0)
  for kind_name in program.schedule[:start]:
    for source in program.kinds[kind_name].slots.values():
      draws[source] += 1
  return draws


def _program_step(kind: StepKind, info, augment: bool):
  """The compiled body of one step of `kind`, the same for one model and for many: gathers and
  preprocesses each slot's batch on device, derives every key from (base_key, step), runs the
  step and advances the step counter.

  Returns:
    ``program_step(state, constants, images, labels, batch, base_key) -> (state, metrics)``.
  """

  def program_step(state, constants, images, labels, batch, base_key):
    key = jax.random.fold_in(base_key, state.step)
    batch = {
      slot: gather_batch(
        images, labels, info, positions, weight, jax.random.fold_in(key, i), augment=augment
      )
      for i, (slot, (positions, weight)) in enumerate(sorted(batch.items()))
    }
    new_state, metrics = kind.fn(state, batch, jax.random.fold_in(key, len(batch)), constants)
    return new_state.replace(step=state.step + 1), metrics

  return program_step


def compile_kinds(
  kinds,
  step_of: Callable[[StepKind], Callable],
  args_of: Callable[[StepKind], tuple],
  out_shardings,
):
  """Compiles the step of each kind in `kinds` once, ahead of time: the one compile path of both
  drivers.

  Args:
    kinds: {kind name: StepKind} to compile.
    step_of: ``step_of(kind)``, the function compiled for a kind.
    args_of: ``args_of(kind)``, the (abstract or concrete) arguments it is lowered with.
    out_shardings: the shardings of its outputs.

  Returns:
    The executables by kind name, and the total compile time in seconds.
  """
  compiled, seconds = {}, 0.0
  for kind_name in sorted(kinds):
    kind = kinds[kind_name]
    t0 = time.perf_counter()
    lowered = jax.jit(step_of(kind), out_shardings=out_shardings).lower(*args_of(kind))
    compiled[kind_name] = lowered.compile()
    seconds += time.perf_counter() - t0
  return compiled, seconds


def _abstract_batch(kind: StepKind, shape: tuple[int, ...], sharding) -> dict:
  """The abstract (positions, weights) of each slot of a batch of `kind`."""
  return {
    slot: (
      jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding),
      jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding),
    )
    for slot in kind.slots
  }


def compile_program(
  program: Program,
  state,
  data: DeviceData,
  mesh,
  seed: int,
  augment: bool,
  constants: Any = None,
  kinds=None,
):
  """Compiles each step kind of `program` named in `kinds` (default: all) for one model.

  Returns executables ``(state, constants, images, labels, batch, base_key) -> (state, metrics)``
  by kind and the total compile time in seconds.
  """
  names = program.kinds if kinds is None else kinds
  constants = {} if constants is None else constants
  base_key = jax.random.key(seed)
  replicated = sharding_lib.replicated(mesh)
  batch_spec = sharding_lib.batch_sharded(mesh)
  return compile_kinds(
    {name: program.kinds[name] for name in names},
    lambda kind: _program_step(kind, data.info, augment),
    lambda kind: (
      state,
      constants,
      data.images,
      data.labels,
      _abstract_batch(kind, (program.batch_size,), batch_spec),
      base_key,
    ),
    (replicated, replicated),
  )


def step_runner(
  program: Program, state: TrainState, data: DeviceData, *, mesh, seed: int, augment: bool = True
) -> Callable[[int], None]:
  """The first step kind of `program`, compiled for `mesh`, as ``run(n)``: n steps on one fixed
  batch, then a wait for the last. What a layout probe times (`sharding.fastest`).

  Args:
    program: the program whose first scheduled step kind is timed.
    state: the initial state (host or device arrays).
    data: the datasets, placed on `mesh`.
    mesh: the mesh the step is compiled for.
    seed: the run's seed (batch order and keys).
    augment: whether the step applies the dataset's augmentation.

  Returns:
    ``run(n)``, which advances its own copy of the state by n steps (n <= MAX_STEPS_IN_FLIGHT).
  """
  kind_name = program.schedule[0]
  kind = program.kinds[kind_name]
  compiled, _ = compile_program(program, state, data, mesh, seed, augment, kinds={kind_name})
  step = compiled[kind_name]
  constants = sharding_lib.replicate({}, mesh)
  base_key = jax.random.key(seed)
  batch = sharding_lib.shard_global_batch(
    {
      slot: BatchSampler(data.sources[source], program.batch_size, seed, source).batch(0)
      for slot, source in kind.slots.items()
    },
    mesh,
  )
  current = sharding_lib.replicate(state, mesh)

  def run(n: int) -> None:
    nonlocal current
    for _ in range(n):
      current, _ = step(current, constants, data.images, data.labels, batch, base_key)
    jax.block_until_ready(current)

  return run


def _summarise(pending, done, total, seconds, examples, elapsed, steps_run) -> dict:
  values = jax.device_get([m for _, m in pending])
  record: dict[str, Any] = {'step': done}
  keys = sorted({k for m in values for k in m})
  for k in keys:
    vals = [float(np.mean(m[k])) for m in values if k in m]  # mean over models, if many
    record[k] = float(np.mean(vals))
  record['examples_per_s'] = examples / max(seconds, 1e-9)
  rate = steps_run / max(elapsed, 1e-9)
  record['eta_s'] = (total - done) / max(rate, 1e-9)
  return record


def _format(record: dict) -> str:
  total_bits = [f'step {record["step"]}']
  for k, v in record.items():
    if k in ('step', 'examples_per_s', 'eta_s'):
      continue
    total_bits.append(f'{k} {v:.4g}')
  total_bits.append(f'{record["examples_per_s"]:.0f} ex/s')
  total_bits.append(f'ETA {record["eta_s"]:.0f}s')
  return ' | '.join(total_bits)


def split_constants(per_model: Sequence[Any]) -> tuple[Any, Any]:
  """Splits the constants of K runs into (shared, stacked): a leaf equal in every run is shared
  (one copy, e.g. a teacher), the others are stacked on a leading model axis (e.g. each seed's
  random labels). Leaves that are shared are None in `stacked` and vice versa."""
  flat = [jax.tree_util.tree_flatten(c) for c in per_model]
  treedef = flat[0][1]
  if any(t != treedef for _, t in flat):
    raise ValueError('the runs have constants of different structures')
  shared, stacked = [], []
  for leaves in zip(*(f[0] for f in flat)):
    first = np.asarray(leaves[0])
    same = all(leaf is leaves[0] or np.array_equal(np.asarray(leaf), first) for leaf in leaves)
    shared.append(leaves[0] if same else None)
    stacked.append(None if same else jnp.stack([jnp.asarray(x) for x in leaves]))
  return (
    jax.tree_util.tree_unflatten(treedef, shared),
    jax.tree_util.tree_unflatten(treedef, stacked),
  )


def _merge_constants(shared, stacked):
  return jax.tree.map(
    lambda a, b: a if b is None else b, shared, stacked, is_leaf=lambda x: x is None
  )


MANY_MODEL_FORMS = ('auto', 'vmap', 'unroll')


def use_vmap(form: str, params) -> bool:
  """Whether a device's models run as one vmapped step ('vmap') or one after another inside the
  compiled step ('unroll'). 'auto': vmap, except on CPU for a model with a convolution (a kernel of
  rank 4 or more in `params`). On XLA:CPU a vmapped convolution whose kernels differ per model
  becomes a grouped convolution, several times slower than the same steps one after another; a
  vmapped dense layer is a batched matmul, as fast as the unrolled models and much quicker to
  compile (docs/speed.md, "Loop forms").
  """
  if form not in MANY_MODEL_FORMS:
    raise ValueError(f'form={form!r}: allowed values are {MANY_MODEL_FORMS}.')
  if form != 'auto':
    return form == 'vmap'
  has_conv = any(np.ndim(leaf) >= 4 for leaf in jax.tree.leaves(params))
  return jax.default_backend() != 'cpu' or not has_conv


def _unrolled(fn, in_axes):
  """`fn` mapped over the leading axis of the arguments whose in_axes is 0, as a Python loop
  (the models one after another in one compiled program), results stacked."""

  def mapped(*args):
    size = next(
      jax.tree.leaves(a)[0].shape[0]
      for a, axis in zip(args, in_axes)
      if axis == 0 and jax.tree.leaves(a)
    )
    outs = [
      fn(
        *[
          jax.tree.map(lambda x, i=i: x[i], a) if axis == 0 else a for a, axis in zip(args, in_axes)
        ]
      )
      for i in range(size)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return mapped


def run_many(
  program: Program,
  states: Sequence[TrainState],
  data: DeviceData,
  *,
  mesh,
  seeds: Sequence[int],
  constants: Sequence[Any] | None = None,
  augment: bool = True,
  log_every: int = 50,
  name: str = 'train',
  keep_metrics: bool = False,
  form: str = 'auto',
) -> RunResult:
  """Runs K independent copies of `program` as one compiled, vmapped program.

  Model k starts from ``states[k]`` with ``constants[k]`` and draws its batches and keys from
  ``seeds[k]`` exactly as `run` with that seed does. `form` (`use_vmap`) says how a device runs
  the models it holds: vmapped, or one after another inside the compiled step. The state gets a leading model axis, sharded
  over the ('models', 'data') `mesh`'s model axis; each model's batch over its data axis.
  Constants equal in every run are passed once (`split_constants`).

  Returns:
    A RunResult whose state has the leading model axis; progress metrics average over models;
    with `keep_metrics`, `step_metrics` holds every step's metrics per model ([K] arrays).
  """
  num_models = len(seeds)
  model_devices = mesh.shape[sharding_lib.MODEL_AXIS]
  if num_models % model_devices:
    raise ValueError(f'{num_models} models do not split over {model_devices} model devices.')
  sharding_lib.check_batch_size(program.batch_size, mesh)
  constants = list(constants) if constants is not None else [{}] * num_models
  shared, stacked = split_constants(constants)
  models = sharding_lib.model_sharded(mesh)
  replicated = sharding_lib.replicated(mesh)
  state = jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states), models)
  stacked = jax.device_put(stacked, models)
  shared = jax.device_put(shared, replicated)
  base_keys = jax.device_put(jnp.stack([jax.random.key(s) for s in seeds]), models)
  samplers = [
    {
      source: BatchSampler(positions, program.batch_size, seed, source)
      for source, positions in data.sources.items()
    }
    for seed in seeds
  ]
  draws = _draw_offsets(program, 0)
  batch_sharding = NamedSharding(
    mesh, PartitionSpec(sharding_lib.MODEL_AXIS, sharding_lib.DATA_AXIS)
  )
  use_vmap_form = use_vmap(form, states[0].params)

  def many_step(kind: StepKind):
    def one_model(state, stacked, shared, images, labels, batch, base_key):
      return _program_step(kind, data.info, augment)(
        state, _merge_constants(shared, stacked), images, labels, batch, base_key
      )

    # Each device group runs the models it holds (a vmap) under shard_map over the model axis:
    # left to the SPMD partitioner, a vmapped convolution whose kernels differ per model
    # (LoRA's batched 1x1 convs, say) came out wrong on XLA:CPU when split over model devices.
    model_spec, replicated_spec = PartitionSpec(sharding_lib.MODEL_AXIS), PartitionSpec()
    in_axes = (0, 0, None, None, None, 0, 0)
    local = jax.vmap(one_model, in_axes=in_axes) if use_vmap_form else _unrolled(one_model, in_axes)
    return jax.shard_map(
      local,
      mesh=mesh,
      in_specs=(
        model_spec,
        model_spec,
        replicated_spec,
        replicated_spec,
        replicated_spec,
        model_spec,
        model_spec,
      ),
      out_specs=(model_spec, model_spec),
      axis_names={sharding_lib.MODEL_AXIS},
      check_vma=False,
    )

  compiled, compile_seconds = compile_kinds(
    {name: program.kinds[name] for name in set(program.schedule)},
    many_step,
    lambda kind: (
      state,
      stacked,
      shared,
      data.images,
      data.labels,
      _abstract_batch(kind, (num_models, program.batch_size), batch_sharding),
      base_keys,
    ),
    (models, models),
  )

  def draw(kind: StepKind) -> dict:
    batch = {}
    for slot, source in kind.slots.items():
      drawn = [s[source].batch(draws[source]) for s in samplers]
      batch[slot] = (np.stack([p for p, _ in drawn]), np.stack([w for _, w in drawn]))
      draws[source] += 1
    return jax.device_put(batch, batch_sharding)

  def execute(kind_name, state, batch):
    return compiled[kind_name](state, stacked, shared, data.images, data.labels, batch, base_keys)

  kept = []

  def keep(done: int, metrics, line: bool) -> None:
    del done, line
    kept.append(metrics)

  state, history, run_seconds, steps_run = _host_loop(
    program,
    state,
    0,
    draw,
    execute,
    examples_per_slot=program.batch_size * num_models,
    log_every=log_every,
    name=f'[{name} x{num_models}]',
    before_line=keep if keep_metrics else None,
  )
  return RunResult(
    state,
    history,
    compile_seconds,
    run_seconds,
    steps_run,
    jax.device_get(kept) if keep_metrics else None,
  )
