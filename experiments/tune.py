r"""Equal-budget tuning against Retrain on a held-out split, then the reported study.

  python -m experiments.tune --config=experiments/configs/cifar10_subset.py \
      --config.forget=random:0.1 --tune_split_seed=1 --multipliers=0.3,1,3

Every method gets the same budget: its tuned field (`jaxunlearn.methods.get(NAME).tune`, the
learning rate unless it has none) at its default times each of --multipliers, one run each on
split seed --tune_split_seed (seed 0). The value with the smallest Avg. Gap to Retrain is kept, and
the study of the config (its own split seed, never the tuning one, and its seeds) runs with it.
Writes tuning.json beside the study's results files (results name 'tuned').
"""

import copy
import os

from absl import flags

import jaxunlearn
from jaxunlearn import cli, report

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), 'configs', 'unlearn.py'), 'Study config file.')
_TUNE_SPLIT_SEED = flags.DEFINE_integer('tune_split_seed', 1, 'The split the tuning runs on.')
_MULTIPLIERS = flags.DEFINE_list('multipliers', ['0.3', '1', '3'],
                                 'Scales of each method\'s tuned field (the budget).')


def _field(cfg, dotted: str):
  for part in dotted.split('.'):
    cfg = cfg[part]
  return cfg


def _set_field(cfg, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  for part in parents:
    cfg = cfg[part]
  cfg[leaf] = value


def tune(config, split_seed: int, multipliers: list[float]) -> dict:
  """{method: {'field', 'default', 'trials': {value: AvgGap}, 'chosen'}} on `split_seed`."""
  if split_seed == config.split_seed:
    raise jaxunlearn.ConfigError(f'--tune_split_seed={split_seed}: must differ from the reported '
                                 f'--config.split_seed ({config.split_seed}).')
  out = {}
  for name in jaxunlearn.methods.parse_methods(config.methods):
    if name not in jaxunlearn.methods.names():
      continue    # a group of variants is not tuned
    field = jaxunlearn.methods.get(name).tune
    default = _field(config.method[name], field)
    trials = {}
    for multiplier in multipliers:
      trial = copy.deepcopy(config)
      trial.split_seed, trial.seeds, trial.methods = split_seed, '0', name
      trial.results_name, trial.plot = 'tuning', False
      _set_field(trial.method[name], field, type(default)(default * multiplier))
      study = jaxunlearn.Study(trial)
      study.run()
      trials[default * multiplier] = study.summary()[name]['AvgGap']['mean']
    chosen = min(trials, key=lambda v: (trials[v], abs(v - default)))
    out[name] = {'field': field, 'default': default, 'trials': trials, 'chosen': chosen}
    print(f'[tune {name}] {field}: ' + ', '.join(f'{v:g} -> {g:.2f}' for v, g in trials.items())
          + f'; chosen {chosen:g}', flush=True)
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  jaxunlearn.Study(config)      # validates everything before any work
  choices = tune(config, _TUNE_SPLIT_SEED.value, [float(m) for m in _MULTIPLIERS.value])
  final = copy.deepcopy(config)
  final.results_name = 'tuned'
  for name, choice in choices.items():
    _set_field(final.method[name], choice['field'], choice['chosen'])
  study = jaxunlearn.Study(final)
  payload = study.run()
  jaxunlearn.write_json(os.path.join(study.experiment_dir, 'tuning.json'),
                        {'tune_split_seed': _TUNE_SPLIT_SEED.value,
                         'multipliers': _MULTIPLIERS.value, 'methods': choices,
                         'reported_split_seed': config.split_seed, 'seeds': payload['seeds']})
  print(f'\n{study.title()}\n{study.table()}\n\n{report.TABLE_NOTE}\n')


if __name__ == '__main__':
  cli.run(main)
