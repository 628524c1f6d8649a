r"""Times every method's step kinds on a fixed model and batch; writes a JSON to track over versions.

  python -m experiments.benchmark --config.methods=all --steps=20 --out=benchmark.json
  python -m experiments.benchmark --config.methods=ft --many=8,32   # K models in one program
  python -m experiments.benchmark --config.methods=ft,rfa_lora --equal_examples

For each method: the preparation time (e.g. a saliency mask pass), the compile time of each step
kind, and steps/s and examples/s of each kind over `--steps` timed steps after one warm-up step.
Retrain's supervised step is timed as the reference, and every method's time per step is also
given as a ratio to it, so numbers compare across machines. A step that takes a D_r and a D_f
batch sees twice the examples of that reference; `--equal_examples` also times it at half the
batch per slot. `--many` times K training steps in one
program against K single ones.

  python -m experiments.benchmark --config.reference=torch [--config.device_preset=gpu]

times the models and steps against a PyTorch re-statement instead
(`experiments/reference_benchmark.py`; needs the `bench` extra, reads no dataset).
"""

import os

from absl import flags

import jaxunlearn
from jaxunlearn import benchmarking, cli, files, report, sharding

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'benchmark.py'),
  'Benchmark config file (the unlearning config plus the reference switches).',
)
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per step kind.', lower_bound=1)
_OUT = flags.DEFINE_string('out', 'benchmark.json', 'Output JSON path.')
_EQUAL_EXAMPLES = flags.DEFINE_bool(
  'equal_examples',
  False,
  'Also time each method whose step takes n batches (D_r and D_f) at '
  'batch_size // n per batch: as many examples per step as the Retrain step it is compared to.',
)
_MANY = flags.DEFINE_list(
  'many',
  [],
  'Numbers of models K: time K training steps in one program against K single ones (e.g. 8,32).',
)
REFERENCES = ('none', 'torch')


def main(argv):
  del argv
  config = _CONFIG.value
  if config.reference not in REFERENCES:
    raise jaxunlearn.ConfigError(
      f'--config.reference={config.reference!r}: must be one of {", ".join(REFERENCES)}.'
    )
  if config.reference == 'torch':
    from experiments import reference_benchmark

    reference_benchmark.run(
      config,
      steps=_STEPS.value if _STEPS.present else None,
      out=_OUT.value if _OUT.present else None,
    )
    return
  study = jaxunlearn.Study(config)
  experiment = study.experiment
  payload = {
    'results': benchmarking.benchmark(
      experiment, study.rows, _STEPS.value, equal_examples=_EQUAL_EXAMPLES.value
    ),
    'steps': _STEPS.value,
    'dataset': experiment.data_config.dataset,
    'model': experiment.training.model,
    'batch_size': experiment.training.batch_size,
    **report.provenance(),
  }
  if _MANY.value:
    payload['many_models'] = benchmarking.many_models_speed(
      experiment, sharding.make_model_mesh(0), [int(k) for k in _MANY.value], _STEPS.value
    )
  files.write_json(_OUT.value, payload)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
