"""Data parallelism over a `jax.sharding.Mesh`.

One mesh axis, ``data``, spans every device JAX sees (across hosts too). Batches are sharded along it,
parameters, optimiser states and the in-memory datasets are replicated. The same code runs on one CPU,
on 8 GPUs or on a TPU pod; `jax.jit` inserts the cross-device reductions.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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

  The CPU layout rule, from measurements on 2 cores (jax 0.10.2, small CNN, batch 128):

  * Runs of many models (`loop.run_many`) spread the models over these devices: each device
    trains its own models, with no collective between devices, so the results are those of the
    single runs whichever layout, and both cores work (`experiments/many_models.py` calls this).
  * Single-model runs stay on one CPU device, each op using every core. One device per core
    would split each batch over the cores and all-reduce the gradients: its step took 34 ms
    against 57 ms on one device where it ran (the torch benchmark of an earlier session), but
    here XLA:CPU's in-process all-reduce deadlocked (its 40 s rendezvous timed out and aborted
    the process) in 7 of 8 tries, on a quiet and on a loaded machine, and with the
    concurrency-optimised scheduler, multi-threaded Eigen or the thunk runtime turned off. Two single-model runs at once, one per device (no collective),
    took 105 ms per step each against 70 ms for one run alone: 1.3x the throughput.

  Call it before JAX initialises its backends (before any JAX computation): `jax.config` raises a
  RuntimeError otherwise. A device count already forced by XLA_FLAGS
  (--xla_force_host_platform_device_count, as the test command sets) is kept.

  Returns:
    The number of CPU devices.
  """
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return jax.device_count('cpu')
  count = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  jax.config.update('jax_num_cpu_devices', count)
  return count


def select_devices(num_devices: int, flag: str = '--config.num_devices') -> list:
  """The first `num_devices` global devices (0: all of them)."""
  available = jax.device_count()
  if num_devices < 0 or num_devices > available:
    raise ValueError(f'{flag}={num_devices}: allowed values are 0 (all devices) to {available}.')
  if num_devices and jax.process_count() > 1:
    raise ValueError(f'{flag}={num_devices}: a multi-host run uses all devices; leave it at 0.')
  return jax.devices()[:num_devices] if num_devices else jax.devices()


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


def shard_models(tree, mesh: Mesh):
  """Places a host PyTree whose leaves have a leading model axis, sharded over the model axis
  (single host)."""
  return jax.device_put(tree, model_sharded(mesh))
