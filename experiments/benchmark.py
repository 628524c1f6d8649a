r"""Times every method's step kinds on a fixed model and batch; writes a JSON to track over versions.

  python -m experiments.benchmark --config.methods=all --steps=20 --out=benchmark.json

For each method: the preparation time (e.g. a saliency mask pass), the compile time of each step
kind, and steps/s and examples/s of each kind over `--steps` timed steps after one warm-up step.
Retrain's supervised step is timed as the reference, and every method's time per step is also
given as a ratio to it, so numbers compare across machines.

  python -m experiments.benchmark --config.reference=torch [--config.device_preset=gpu]

times the models and steps against a PyTorch re-statement instead
(`experiments/reference_benchmark.py`; needs the `bench` extra, no dataset). The imports of the
method path are deferred so that this mode runs without the dataset libraries.
"""

import os
import platform
import time

import jax
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'benchmark.py'),
    'Benchmark config file (the unlearning config plus the reference switches).',
    lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per step kind.', lower_bound=1)
_OUT = flags.DEFINE_string('out', 'benchmark.json', 'Output JSON path.')


def time_kinds(program, state, setup, seed: int, steps: int) -> dict:
  """Compile time and throughput of each step kind of `program`, on fixed batches."""
  from jaxunlearn import sharding
  from jaxunlearn.loop import BatchSampler, compile_program

  t0 = time.perf_counter()
  compiled, _ = compile_program(program, state, setup.train, setup.mesh, seed, augment=True)
  compile_s = time.perf_counter() - t0
  base_key = jax.random.key(seed)
  out = {'compile_s': compile_s, 'kinds': {}}
  for name, kind in program.kinds.items():
    batch = {slot: BatchSampler(setup.train.sources[source], program.batch_size, seed,
                                source).batch(0) for slot, source in kind.slots.items()}
    batch = sharding.shard_global_batch(batch, setup.mesh)
    run_state, _ = compiled[name](state, setup.train.images, setup.train.labels, batch, base_key)
    jax.block_until_ready(run_state)
    t0 = time.perf_counter()
    for _ in range(steps):
      run_state, metrics = compiled[name](run_state, setup.train.images, setup.train.labels,
                                          batch, base_key)
    jax.block_until_ready((run_state, metrics))
    seconds = (time.perf_counter() - t0) / steps
    out['kinds'][name] = {'step_s': seconds, 'steps_per_s': 1.0 / seconds,
                          'examples_per_s': program.batch_size * len(kind.slots) / seconds}
  return out


def benchmark_methods(config) -> None:
  """Times every method of `config` (the default mode)."""
  from jaxunlearn import experiment
  from jaxunlearn.loop import Program, StepKind
  from jaxunlearn.methods import METHODS, UnlearnContext
  from jaxunlearn.optim import make_optimizer
  from jaxunlearn.train import create_state, supervised_step
  from jaxunlearn.unlearn import parse_methods

  methods = parse_methods(config.methods)
  setup = experiment.prepare(config)
  model_fns, variables = experiment.build_model(config, setup.info, config.original_seed)
  tx = make_optimizer(config.optimizer, 1000)
  reference = Program({'train': StepKind(supervised_step(model_fns, tx), {'train': 'retain'})},
                      ['train'], config.batch_size)
  results = {'retrain_step': time_kinds(reference, create_state(variables, {'main': tx}), setup,
                                        0, _STEPS.value)}
  ref_step = results['retrain_step']['kinds']['train']['step_s']
  print(f'retrain step: {ref_step * 1e3:.1f} ms', flush=True)
  for name in methods:
    cfg = config.method[name]
    ctx = UnlearnContext(model_fns=model_fns, original=variables, data=setup.train,
                         num_classes=setup.info.num_classes, batch_size=cfg.batch_size, seed=0,
                         mesh=setup.mesh,
                         init_variables=lambda s: experiment.build_model(config, setup.info, s)[1])
    t0 = time.perf_counter()
    program, state = METHODS[name](ctx, cfg)
    jax.block_until_ready(state)
    prepare_s = time.perf_counter() - t0
    timing = time_kinds(program, state, setup, 0, _STEPS.value)
    timing['prepare_s'] = prepare_s
    for kind in timing['kinds'].values():
      kind['step_time_vs_retrain_step'] = kind['step_s'] / ref_step
    results[name] = timing
    print(f'{name}: prepare {prepare_s:.2f}s compile {timing["compile_s"]:.2f}s ' + ' '.join(
        f'{k} {v["step_s"] * 1e3:.1f}ms ({v["examples_per_s"]:.0f} ex/s)'
        for k, v in timing['kinds'].items()), flush=True)
  payload = {'results': results, 'steps': _STEPS.value, 'dataset': config.dataset,
             'model': config.model, 'batch_size': config.batch_size,
             'device': {'platform': jax.devices()[0].platform,
                        'kind': jax.devices()[0].device_kind, 'count': jax.device_count(),
                        'host': platform.machine()},
             'jax': jax.__version__}
  experiment.write_json(_OUT.value, payload)
  print(f'wrote {_OUT.value}')


def main(argv):
  del argv
  config = _CONFIG.value
  if config.reference == 'none':
    benchmark_methods(config)
  elif config.reference == 'torch':
    from experiments import reference_benchmark
    reference_benchmark.run(config, steps=_STEPS.value if _STEPS.present else None,
                            out=_OUT.value if _OUT.present else None)
  else:
    raise ValueError(f'--config.reference={config.reference!r}: allowed: none, torch.')


if __name__ == '__main__':
  app.run(main)
