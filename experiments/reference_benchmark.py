r"""jaxunlearn against a PyTorch re-statement of the same models and steps, in one process.

  python -m experiments.benchmark --config.reference=torch                     # CPU, a few minutes
  python -m experiments.benchmark --config.reference=torch --config.device_preset=gpu \
      --config.sfron_run=True

Per case (model, batch size, compute dtype) and step kind, the library's own steps
(`experiments/reference_jax.py`) and their torch twins (`experiments/torch_steps.py` on the models
of `experiments/torch_reference.py`) start from the same weights, must agree on their losses, and
are timed alternately (`experiments/reference_compare.py`). The JSON holds, per case and kind, the
median time per step of each side, the median over rounds of the per-round ratio jax / torch and
the ratio of the fastest rounds, with the machine's load average, versions and settings.

On the CPU the JAX side shards each batch over one CPU device per core (`cpu_devices`; see
`jaxunlearn.sharding.use_one_cpu_device_per_core`) and torch runs as many threads; with
`cpu_single_device_baseline`, the JAX step on one device ('jax_1device') is timed in the same
rounds, and 'default_layout' names the faster of the two: the layout the main job's probe picks.
PyTorch's OpenMP threads spin while a peer is descheduled, so only runs on a quiet machine, or with
``OMP_WAIT_POLICY=PASSIVE`` on both sides, compare fairly (docs/speed.md). With `sfron_run`, a
whole SFR-on schedule runs on ResNet-18 (forget every 5th iteration, cosine learning rate and
cosine-faded forget scale 25, as the official code), both sides drawing the same batches.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import time

import jax

from experiments.reference_jax import (
  AGREEMENT_STEPS,
  FORGET_FRACTION,
  KINDS,
  LR,
  MASK_DENSITY,
  MOMENTUM,
  SFRON,
  WEIGHT_DECAY,
  Case,
  RunCase,
)
from jaxunlearn import files, report, sharding
from jaxunlearn.config import ConfigError

OUT_DIR = os.path.join(os.path.dirname(__file__), 'benchmarks')
# CPU sizes keep the run short on a small machine: ResNet-18 and ViT-Tiny at batch 16 with few
# timed steps; the CNN at its training batch of 128.
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
NOTES = {
  'cpu': 'CPU preset: ResNet-18 and ViT-Tiny at batch 16 with 2 timed steps x 3 rounds to '
  'finish in a few minutes on 2 cores; the CNN at batch 128.',
  'gpu': 'GPU preset.',
}


def _listed(text: str) -> list[str]:
  return [item for item in text.split(',') if item]


def check_config(config) -> None:
  """Raises `ConfigError` (one line naming the flag) on a bad reference setting, or without
  PyTorch."""
  if config.device_preset not in ('auto', *PRESETS):
    raise ConfigError(
      f'--config.device_preset={config.device_preset!r}: allowed: auto, {", ".join(PRESETS)}.'
    )
  models = sorted({case.model for preset in PRESETS.values() for case in preset['cases']})
  for flag, allowed in (('reference_models', models), ('reference_kinds', KINDS)):
    unknown = sorted(set(_listed(config[flag])) - set(allowed))
    if unknown:
      raise ConfigError(f'--config.{flag}: unknown {unknown}; allowed: {", ".join(allowed)}.')
  if importlib.util.find_spec('torch') is None:
    raise ConfigError("--config.reference=torch needs PyTorch: pip install -e '.[bench]'.")


def select_cases(preset: dict, config, steps: int | None = None) -> list[Case]:
  """The preset's cases restricted to the config's models and kinds, with its timing overrides
  (`steps` timed steps per round, `reference_repeats` rounds)."""
  models, kinds = _listed(config.reference_models), _listed(config.reference_kinds)
  cases = []
  for case in preset['cases']:
    selected = tuple(k for k in case.kinds if not kinds or k in kinds)
    if (models and case.model not in models) or not selected:
      continue
    changes = {'kinds': selected}
    if steps:
      changes['timed_steps'] = steps
    if config.reference_repeats:
      changes['repeats'] = config.reference_repeats
    cases.append(dataclasses.replace(case, **changes))
  return cases


def _preset_name(device_preset: str) -> str:
  """The preset of `device_preset` on JAX's backend ('auto': from the backend)."""
  on_gpu = jax.default_backend() == 'gpu'
  if device_preset == 'auto':
    return 'gpu' if on_gpu else 'cpu'
  if device_preset == 'gpu' and not on_gpu:
    raise ConfigError(
      f'--config.device_preset=gpu: JAX runs on {jax.default_backend()}, not a GPU; its sizes '
      'would take hours there.'
    )
  return device_preset


def _torch_device():
  """The torch device matching JAX's backend, with cuDNN's autotuner on a GPU (XLA autotunes its
  convolutions) and one thread per schedulable core on the CPU (as XLA:CPU runs)."""
  import torch

  if jax.default_backend() != 'gpu':
    torch.set_num_threads(sharding.schedulable_cores())
    return torch.device('cpu')
  if not torch.cuda.is_available():
    raise RuntimeError('JAX runs on a GPU but torch has no CUDA: the two would not compare.')
  torch.backends.cudnn.benchmark = True
  return torch.device('cuda')


def _git(*args: str) -> str:
  try:
    return subprocess.run(
      ['git', *args], cwd=os.path.dirname(__file__), capture_output=True, text=True, check=True
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ''


def environment(device, jax_devices) -> dict:
  """Where the numbers were made: `report.provenance` with Python's and torch's versions and the
  torch device, the git commit and command, and the thread settings of both sides."""
  import torch

  record = report.provenance(sharding.make_mesh(jax_devices))
  record['versions'].update(
    python=platform.python_version(), torch=importlib.metadata.version('torch')
  )
  record['device'].update(
    torch_device=str(device),
    torch_device_name=(
      torch.cuda.get_device_name(device) if device.type == 'cuda' else sharding.cpu_model()
    ),
    cpus=sharding.schedulable_cores(),
  )
  return {
    'jax_devices': len(jax_devices),
    'command': ' '.join(
      [os.path.basename(sys.executable), '-m', 'experiments.benchmark'] + sys.argv[1:]
    ),
    'git_commit': _git('rev-parse', 'HEAD'),
    'git_dirty': bool(_git('status', '--porcelain', '--untracked-files=no')),
    **record,
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


def _payload(preset_name: str, cases: list[Case], device, jax_devices) -> dict:
  """The JSON's header: the preset, its cases, the shared settings and the environment."""
  return {
    'preset': preset_name,
    'cases': [dataclasses.asdict(c) for c in cases],
    'note': NOTES[preset_name],
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
    'results': {},
    **environment(device, jax_devices),
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
  check_config(config)
  # Both before JAX initialises its backends. On a GPU, torch shares the device's memory, which
  # JAX would otherwise preallocate.
  if config.cpu_devices:
    jax.config.update('jax_num_cpu_devices', config.cpu_devices)
  else:
    sharding.use_one_cpu_device_per_core()
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  from experiments import reference_compare

  preset_name = _preset_name(config.device_preset)
  device = _torch_device()
  # The torch side runs on one device; so does the JAX side on a GPU.
  jax_devices = jax.devices()[:1] if device.type == 'cuda' else jax.devices()
  cases = select_cases(PRESETS[preset_name], config, steps)
  if out is None:
    stamp = datetime.datetime.now(datetime.UTC).strftime('%Y%m%d-%H%M%S')
    out = os.path.join(OUT_DIR, f'torch_reference_{preset_name}_{stamp}.json')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  load_before, started = os.getloadavg(), time.perf_counter()
  payload = _payload(preset_name, cases, device, jax_devices)

  def write(complete: bool):
    payload['complete'] = complete
    payload['total_s'] = time.perf_counter() - started
    payload['load_average'] = {'before': load_before, 'after': os.getloadavg()}
    files.write_json(out, payload)

  # Written after every case, so that a run cut short by a time limit keeps what it measured.
  for case in cases:
    payload['results'][case.name] = reference_compare.compare_case(
      case, device, jax_devices, single_device_baseline=config.cpu_single_device_baseline
    )
    write(complete=False)
  if config.sfron_run:
    payload['sfron_run'] = reference_compare.sfron_run(
      PRESETS[preset_name]['run'], device, jax_devices
    )
  write(complete=True)
  print_table(payload['results'])
  print(
    f'1-minute load average {load_before[0]:.1f} before, {payload["load_average"]["after"][0]:.1f}'
    f' after, on {sharding.schedulable_cores()} cores; JAX on {len(jax_devices)} '
    f'{jax_devices[0].platform} device(s).'
  )
  print(f'wrote {out}')
  return payload
