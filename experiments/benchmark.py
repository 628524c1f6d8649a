r"""Times every method's step kinds on a fixed model and batch; writes a JSON to track over versions.

  python -m experiments.benchmark --config.methods=all --steps=20 --out=benchmark.json

For each method: the preparation time (e.g. a saliency mask pass), the compile time of each step
kind, and steps/s and examples/s of each kind over `--steps` timed steps after one warm-up step.
Retrain's supervised step is timed as the reference, and every method's time per step is also
given as a ratio to it, so numbers compare across machines.
"""

import os

from absl import flags

import jaxunlearn
from jaxunlearn import cli

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), 'configs', 'unlearn.py'),
    'Unlearning config file (dataset, model, methods, method options).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per step kind.', lower_bound=1)
_OUT = flags.DEFINE_string('out', 'benchmark.json', 'Output JSON path.')
_MANY = flags.DEFINE_list('many', [], 'Numbers of models K: time K vmapped training steps against '
                          'K single ones (e.g. 8,32).')


def main(argv):
  del argv
  jaxunlearn.Study(_CONFIG.value).benchmark(_STEPS.value, out=_OUT.value,
                                            many_models=tuple(int(k) for k in _MANY.value))
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  cli.run(main)
