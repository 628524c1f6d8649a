"""How many devices JAX's CPU backend exposes: one, or one per core, chosen by timing the run's
own training step once per machine.

One CPU device runs each op of a step with all cores in turn; one device per core splits each
batch over the cores (the mesh's data axis), and K models over them in a many-model run. Which is
faster depends on the model: on 2 cores the small CNN's step at batch 128 took 34 ms with one
device per core against 57 ms with one device, while ResNet-18 at batch 16 was 10-12% slower
(`experiments/benchmarks/`). So `configure` times the supervised step of the run's model, batch
size and image shape under both layouts, in two short subprocesses (JAX fixes its device count
when it starts), keeps the faster and caches the choice in `cache_path()`; later runs on the same
machine read it. It must run before JAX starts (before any JAX computation); the binaries call it
after validating their config.

Results: a single model's run differs between the layouts only by float rounding (the batch's
sums are split over devices, e.g. 3e-8 in the CNN's weights after three SGD steps); runs of K
models spread over devices are the K single runs, whichever layout. Which layout ran is printed
and recorded in results files (`device`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata

import jax
import numpy as np
from flax import nnx

from jaxunlearn import data, sharding
from jaxunlearn.config import OptimizerConfig
from jaxunlearn.data.device import BatchSampler, DeviceData
from jaxunlearn.loop import compile_program
from jaxunlearn.models import create_model, set_compute_dtype
from jaxunlearn.state import functionalize
from jaxunlearn.train import create_state, supervised_program

CACHE_ENV = 'JAXUNLEARN_CPU_LAYOUT_CACHE'
DEVICES_ENV = 'JAXUNLEARN_CPU_DEVICES'
ACCELERATOR_PACKAGES = ('jax-cuda12-plugin', 'jax-cuda13-plugin', 'jax-rocm60-plugin', 'libtpu')
PROBE_STEPS = 15


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The step a probe times: a model of the zoo on images of one shape."""
  model: str
  model_kwargs: dict
  image_shape: tuple[int, int, int]
  num_classes: int
  batch_size: int
  compute_dtype: str = 'float32'

  def key(self) -> str:
    """What the choice depends on: the step, the machine and the JAX version."""
    payload = {**dataclasses.asdict(self), 'cores': cores(), 'cpu': _cpu_name(),
               'jax': metadata.version('jaxlib'), 'python': platform.python_version()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cores() -> int:
  """The cores this process may run on."""
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def choose(candidates: Sequence[int], step_seconds: Callable[[int], float]) -> tuple[int, dict]:
  """The device count of `candidates` whose step is fastest, and every timing.

  Args:
    candidates: device counts to try, e.g. (1, cores()).
    step_seconds: the seconds one step takes with a given device count.

  Returns:
    (the fastest count, {count: seconds}); a tie goes to the earlier candidate.
  """
  timings = {int(n): float(step_seconds(n)) for n in dict.fromkeys(candidates)}
  return min(timings, key=timings.get), timings


def cache_path() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser('~'), '.cache', 'jaxunlearn', 'cpu_layout.json')


def _read_cache() -> dict:
  try:
    with open(cache_path()) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _write_cache(entries: dict) -> None:
  path = cache_path()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    json.dump(entries, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def probe_step_seconds(num_devices: int, spec: StepSpec) -> float:
  """Seconds per step of `spec` on `num_devices` CPU devices, timed in a fresh process."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  result = subprocess.run(
      [sys.executable, '-m', 'jaxunlearn.cpu_layout', str(num_devices),
       json.dumps(dataclasses.asdict(spec))],
      capture_output=True, text=True, env=env, check=False)
  if result.returncode:
    raise RuntimeError(f'the CPU layout probe on {num_devices} devices failed: '
                       f'{result.stderr.strip().splitlines()[-1:]}')
  return float(result.stdout.strip().splitlines()[-1])


def fixed_count() -> int | None:
  """The device count the environment fixes, if any: $JAXUNLEARN_CPU_DEVICES, or XLA_FLAGS'
  --xla_force_host_platform_device_count (as the test command sets)."""
  if os.environ.get(DEVICES_ENV):
    return int(os.environ[DEVICES_ENV])
  for flag in os.environ.get('XLA_FLAGS', '').split():
    if flag.startswith('--xla_force_host_platform_device_count='):
      return int(flag.split('=', 1)[1])
  return None


def has_accelerator() -> bool:
  """Whether a GPU or TPU plugin of JAX is installed (then the CPU layout does not matter)."""
  for package in ACCELERATOR_PACKAGES:
    try:
      metadata.version(package)
      return True
    except metadata.PackageNotFoundError:
      pass
  return False


def choose_for(spec: StepSpec, step_seconds: Callable[[int], float] = None) -> int:
  """The CPU device count for runs of `spec` on this machine: fixed by the environment, read
  from the cache, or chosen by timing (then cached). Prints one line saying which and why."""
  fixed = fixed_count()
  if fixed is not None:
    return fixed
  entries = _read_cache()
  key = spec.key()
  if key not in entries:
    count, timings = choose((1, cores()), step_seconds or (
        lambda n: probe_step_seconds(n, spec)))
    entries[key] = {'devices': count, 'step_ms': {str(n): 1e3 * t for n, t in timings.items()},
                    'spec': dataclasses.asdict(spec)}
    _write_cache(entries)
  entry = entries[key]
  timings = ', '.join(f'{n} device{"s" * (n != "1")} {ms:.0f} ms'
                      for n, ms in entry['step_ms'].items())
  print(f'[cpu layout] {entry["devices"]} CPU device(s): {spec.model} step at batch '
        f'{spec.batch_size}: {timings} (cached in {cache_path()})', flush=True)
  return entry['devices']


def configure(config, *, per_core: bool = False) -> int | None:
  """Sets JAX's CPU device count for a run of `config` (a study or training config) before JAX
  starts: one per core with `per_core` (many-model runs spread models over them), else the
  faster layout for the config's step (`choose_for`). Nothing to do on a machine with a GPU or
  TPU plugin. Returns the count set, or None."""
  if has_accelerator():
    return None
  if per_core:
    count = fixed_count() or cores()
  else:
    info = data.dataset_info(config.dataset, config.get('data_dir') or None,
                             image_size=config.get('image_size', ''),
                             augment=config.get('augment', 'auto'))
    count = choose_for(StepSpec(
        model=config.model, model_kwargs=dict(config.get('model_kwargs', {}) or {}),
        image_shape=tuple(info.image_shape), num_classes=info.num_classes,
        batch_size=config.batch_size, compute_dtype=config.get('compute_dtype', 'float32')))
  jax.config.update('jax_num_cpu_devices', count)
  return count


def step_seconds(num_devices: int, spec: StepSpec, steps: int = PROBE_STEPS) -> float:
  """Times `steps` supervised steps of `spec` on `num_devices` CPU devices in this process (which
  must not have started JAX): the loop's compiled step, the batch sharded over the devices."""
  jax.config.update('jax_num_cpu_devices', num_devices)
  mesh = sharding.make_mesh()
  channels = spec.image_shape[-1]
  info = data.DatasetInfo('probe', tuple(spec.image_shape), spec.num_classes, (0.5,) * channels,
                     (0.25,) * channels, augment=False, builtin=True)
  rng = np.random.default_rng(0)
  num = 4 * spec.batch_size
  images = rng.integers(0, 256, (num,) + tuple(spec.image_shape), dtype=np.uint8)
  labels = rng.integers(0, spec.num_classes, num)
  arrays = DeviceData.create(images, labels, info, {'train': np.arange(num)}, mesh)
  fns, variables = functionalize(set_compute_dtype(create_model(
      spec.model, num_classes=spec.num_classes, input_shape=tuple(spec.image_shape),
      rngs=nnx.Rngs(0), **spec.model_kwargs), spec.compute_dtype))
  program, txs = supervised_program(fns, OptimizerConfig(), num_examples=num,
                                    batch_size=spec.batch_size, epochs=steps + 1, source='train')
  state = sharding.replicate(create_state(variables, txs), mesh)
  compiled, _ = compile_program(program, state, arrays, mesh, 0, augment=False)
  batch = sharding.shard_global_batch(
      BatchSampler(arrays.sources['train'], spec.batch_size, 0, 'train').batch(0), mesh)
  args = ({}, arrays.images, arrays.labels, {'train': batch}, jax.random.key(0))
  state, _ = compiled['train'](state, *args)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, _ = compiled['train'](state, *args)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


if __name__ == '__main__':
  spec_values = json.loads(sys.argv[2])
  spec_values['image_shape'] = tuple(spec_values['image_shape'])
  print(step_seconds(int(sys.argv[1]), StepSpec(**spec_values)))
