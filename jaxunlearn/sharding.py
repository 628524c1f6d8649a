"""Data parallelism over a `jax.sharding.Mesh`.

One mesh axis, ``data``, spans every device JAX sees (across hosts too). Batches are sharded along it,
parameters, optimiser states and the in-memory datasets are replicated. The same code runs on one CPU,
on 8 GPUs or on a TPU pod; `jax.jit` inserts the cross-device reductions.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jaxlib
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxunlearn import files

DATA_AXIS = 'data'


def maybe_initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-host run; a no-op for a single process.

  On Cloud TPU pods `jax.distributed.initialize()` needs no arguments; elsewhere all three are given
  (the tests start two local processes with the coordinator on 127.0.0.1).
  """
  if coordinator_address is None and num_processes is None:
    return
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def use_one_cpu_device_per_core() -> int:
  """Makes JAX's CPU backend expose one device per schedulable core; returns that count.

  The binaries call it (`jaxunlearn.cli.run`), so each run can take one device or all of them:

  * Runs of many models (`loop.run_many`) spread the models over these devices: each device
    trains its own models, with no collective between devices, so the results are those of the
    single runs whichever layout, and both cores work.
  * A single model runs on one of them, each op using every core, or data parallel over all of
    them, whichever the timed probe of its training step finds faster (`fastest`, run by
    `jaxunlearn.experiment.prepare` when --config.num_devices=-1, cached per machine): XLA:CPU's
    kernels use a second core poorly, so splitting the batch is what makes several cores work
    for some models, while others run faster on one device (timings: docs/speed.md). The
    all-reduce between the devices relies on the loop's bound on steps in flight
    (`loop.MAX_STEPS_IN_FLIGHT`).

  Call it before JAX initialises its backends (before any JAX computation): `jax.config` raises a
  RuntimeError otherwise. A device count already forced by XLA_FLAGS
  (--xla_force_host_platform_device_count, as the test command sets) is kept.

  Returns:
    The number of CPU devices.
  """
  forced = re.search(r'xla_force_host_platform_device_count=(\d+)', os.environ.get('XLA_FLAGS', ''))
  if forced:  # read from the flag: asking JAX would initialise its backends here
    return int(forced.group(1))
  count = schedulable_cores()
  jax.config.update('jax_num_cpu_devices', count)
  return count


def interleaved(
  runners: Mapping[str, Callable[[int], Any]], steps: int, rounds: int
) -> dict[str, list[float]]:
  """Seconds per step of each runner, `rounds` rounds of `steps` steps, in the order A, B, B, A,
  A, B, ... so that a drift of the machine's load does not favour one side.

  Args:
    runners: name -> ``run(n)``, which runs n steps and returns when they are done.
    steps: steps per runner and round.
    rounds: timed rounds.

  Returns:
    Every runner's seconds per step, one entry per round.
  """
  times = {name: [] for name in runners}
  names = list(runners)
  for r in range(rounds):
    for name in names if r % 2 == 0 else names[::-1]:
      start = time.perf_counter()
      runners[name](steps)
      times[name].append((time.perf_counter() - start) / steps)
  return times


def fastest(
  candidates: Mapping[str, Callable[[int], Any]], *, steps: int = 4, rounds: int = 3
) -> tuple[str, dict[str, float]]:
  """The candidate with the shortest median time per step: one warm-up call each, then
  `interleaved` rounds.

  Args:
    candidates: name -> ``run(n)``, which runs n steps and returns when they are done.
    steps: steps per candidate and round.
    rounds: timed rounds.

  Returns:
    The fastest name and every candidate's median seconds per step.
  """
  for run in candidates.values():
    run(1)
  times = interleaved(candidates, steps, rounds)
  medians = {name: float(np.median(t)) for name, t in times.items()}
  return min(medians, key=medians.get), medians


def schedulable_cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def layout_cache_path() -> str:
  """Where probed layouts are kept: $JAXUNLEARN_CACHE_DIR or ~/.cache/jaxunlearn."""
  root = os.environ.get('JAXUNLEARN_CACHE_DIR') or os.path.join(
    os.path.expanduser('~'), '.cache', 'jaxunlearn'
  )
  return os.path.join(root, 'cpu_layouts.json')


def cpu_model() -> str:
  """The CPU's model name, from /proc/cpuinfo where there is one."""
  with contextlib.suppress(OSError):
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    if names:
      return names[0]
  return platform.processor()


def machine_key() -> dict:
  """What a layout's speed depends on besides the step: CPU model, cores, jax and jaxlib."""
  return {
    'cpu': cpu_model(),
    'cores': schedulable_cores(),
    'cpu_devices': jax.device_count('cpu'),
    'jax': jax.__version__,
    'jaxlib': jaxlib.__version__,
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def _layout_records() -> dict:
  try:
    with open(layout_cache_path()) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def cached_layout(key: dict) -> dict | None:
  """The probe record stored for `key` ({'choice', 'seconds_per_step', ...}), if any."""
  return _layout_records().get(json.dumps(key, sort_keys=True))


def store_layout(key: dict, record: dict) -> None:
  """Adds `record` for `key` to the cache file (written whole, atomically)."""
  records = _layout_records()
  records[json.dumps(key, sort_keys=True)] = record
  path = layout_cache_path()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_json(path, records)


def select_devices(num_devices: int, flag: str = '--config.num_devices') -> list:
  """The first `num_devices` global devices (0, or -1 before the CPU probe: all of them)."""
  available = jax.device_count()
  if num_devices < -1 or num_devices > available:
    raise ValueError(
      f'{flag}={num_devices}: allowed values are -1 (probed on CPU), 0 (all devices) to '
      f'{available}.'
    )
  if num_devices > 0 and jax.process_count() > 1:
    raise ValueError(f'{flag}={num_devices}: a multi-host run uses all devices; leave it at 0.')
  return jax.devices()[:num_devices] if num_devices > 0 else jax.devices()


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all global devices)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = '--config.batch_size') -> None:
  """Raises a ValueError unless `batch_size` splits evenly over the mesh and the hosts."""
  num_devices = mesh.devices.size
  if batch_size <= 0 or batch_size % num_devices:
    raise ValueError(
      f'{flag}={batch_size}: the batch size must be a positive multiple of the '
      f'number of devices ({num_devices}).'
    )


def replicate(tree, mesh: Mesh):
  """Places a host PyTree on every device of the mesh."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(
    lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]),
    tree,
  )


def shard_global_batch(tree, mesh: Mesh):
  """Shards a batch PyTree that every host holds in full (leading axis = global batch).

  Each host passes only its own slice to `jax.make_array_from_process_local_data`, which is how a
  multi-host input pipeline feeds a global batch.
  """
  sharding = batch_sharded(mesh)
  num_hosts, host = jax.process_count(), jax.process_index()

  def local_slice(x):
    x = np.asarray(x)
    per_host = x.shape[0] // num_hosts
    return x[host * per_host : (host + 1) * per_host]

  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, local_slice(x), np.shape(x)), tree
  )


MODEL_AXIS = 'models'


def make_model_mesh(model_devices: int = 0, devices=None) -> Mesh:
  """A ('models', 'data') mesh for many models trained at once: the model axis spans
  `model_devices` devices (0: all), the data axis the rest.

  Raises:
    ValueError: `model_devices` does not divide the device count.
  """
  devices = jax.devices() if devices is None else list(devices)
  model_devices = model_devices or len(devices)
  if model_devices < 1 or len(devices) % model_devices:
    raise ValueError(
      f'--config.eval.model_devices={model_devices}: must divide the number of '
      f'devices ({len(devices)}).'
    )
  return jax.make_mesh(
    (model_devices, len(devices) // model_devices),
    (MODEL_AXIS, DATA_AXIS),
    axis_types=(AxisType.Auto, AxisType.Auto),
    devices=devices,
  )


def model_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis over the mesh's model axis (a stacked state of many models)."""
  return NamedSharding(mesh, PartitionSpec(MODEL_AXIS))
