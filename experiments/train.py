r"""Trains the original model (all training data) and/or the retrained model (D_r) of an experiment.

  python -m experiments.train --config=experiments/configs/train.py \
      --config.forget=class:3 --config.train=both

Progress lines give step, loss, accuracy, examples/s and ETA; each run directory ends with
checkpoints/, config.json and metrics.json, and the experiment directory holds the split.
"""

import json
import os

import jaxunlearn
from jaxunlearn import cli

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'train.py'), 'Training config file.'
)
TRAIN_CHOICES = ('original', 'retrain', 'both')


def main(argv):
  del argv
  config = _CONFIG.value
  if config.train not in TRAIN_CHOICES:
    raise jaxunlearn.ConfigError(
      f'--config.train={config.train!r}: must be one of {", ".join(TRAIN_CHOICES)}.'
    )
  study = jaxunlearn.Study(config)
  results = {}
  if config.train in ('original', 'both'):
    results['original'] = study.original(config.seed).scores
  if config.train in ('retrain', 'both'):
    results['retrain'] = study.retrain(config.seed).scores
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == '__main__':
  cli.run(main)
