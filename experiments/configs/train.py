r"""Training of the Original and Retrain models: the small CNN on the offline `mnist5k` digits.

  python -m experiments.train --config=experiments/configs/train.py --config.epochs=10

Every field, its default and what it allows: `jaxunlearn.config` (DataConfig, TrainingConfig,
EvalConfig) and `jaxunlearn.study.DistributedConfig`.
"""

import jaxunlearn


def get_config():
  c = jaxunlearn.training_config()
  c.seed = 0
  c.train = 'both'  # original | retrain | both
  return c
