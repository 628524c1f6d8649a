r"""Trains the original model (all training data) and/or the retrained model (D_r) of an experiment.

  python -m experiments.train --config=experiments/configs/train.py \
      --config.forget=class:3 --config.train=both

Progress lines give step, loss, accuracy, examples/s and ETA; each run directory ends with
checkpoints/, config.json and metrics.json, and the experiment directory holds the split.
"""

import json
import os

from absl import app, logging
from ml_collections import config_flags

from jaxunlearn import experiment, sharding

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'train.py'),
    'Training config file.', lock_config=True)
TRAIN_CHOICES = ('original', 'retrain', 'both')


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config.train not in TRAIN_CHOICES:
    raise app.UsageError(f'--config.train={config.train!r}: allowed values are {TRAIN_CHOICES}.')
  dist = config.distributed
  sharding.maybe_initialize_distributed(dist.coordinator_address or None,
                                        dist.num_processes or None, dist.process_id)
  setup = experiment.prepare(config)
  results = {}
  kinds = ('original', 'retrain') if config.train == 'both' else (config.train,)
  for kind in kinds:
    _, _, results[kind] = experiment.train_model(setup, kind=kind, seed=config.seed)
  print(json.dumps(results, indent=2, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
