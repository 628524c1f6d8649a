r"""Equal-budget tuning against Retrain on a held-out split, then the reported study.

  python -m experiments.tune --config=experiments/configs/cifar10_subset.py \
      --config.forget=random:0.1 --tune_split_seed=1 --multipliers=0.3,1,3

The budget rule, the same for every method: each of its tuned knobs
(`jaxunlearn.methods.get(NAME).tune`: the learning rate, and the weight that sets how hard it
pushes on D_f against D_r where it has one) takes its default times each of --multipliers, and
every combination runs once on split seed --tune_split_seed (seed 0), each a row of one study: 3
runs for a method with one knob, 9 for one with two. A knob written '1-NAME' scales 1 - NAME (NegGrad+'s forget weight
1 - beta); a value outside the field's allowed range is clipped to its closed bound (SalUn's
mask_fraction and the regularisers' alpha stop at 1) or dropped, integers are rounded, and a
combination the config refuses (SCRUB's msteps above its epochs) is reported and skipped. The
combination with the smallest Avg. Gap to Retrain is kept (ties: the one nearest the defaults),
and the study of the config (its own split seed, never the tuning one, and its seeds) runs with
it. Writes tuning.json beside the study's results files (results name 'tuned').

To retune some methods of a committed table (after one of them changed), run those with
--config.methods and --keep_from=DIR (the directory of its tuned.json and tuning.json): the other
rows and choices are kept, once this run's Original and Retrain rows are checked equal to the
earlier run's score by score, and the merged tuned.json records which rows came from which run.
"""

import copy
import dataclasses
import itertools
import json
import math
import os
import typing

from absl import flags

import jaxunlearn
from jaxunlearn import cli, figures, metrics, report
from jaxunlearn.study import REFERENCE_ROWS
from jaxunlearn.unlearn import summarise

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'unlearn.py'), 'Study config file.'
)
_TUNE_SPLIT_SEED = flags.DEFINE_integer('tune_split_seed', 1, 'The split the tuning runs on.')
_KEEP_FROM = flags.DEFINE_string(
  'keep_from',
  '',
  'A directory holding an earlier tuned.json and tuning.json of the same protocol: the methods '
  "not tuned now keep their choices and reported rows from it (after checking that this run's "
  'Original and Retrain rows equal its own), and the merged files are written there.',
)
_MULTIPLIERS = flags.DEFINE_list(
  'multipliers', ['0.3', '1', '3'], 'Scales of each tuned knob of each method (the budget).'
)

COMPLEMENT = '1-'


def field_name(knob: str) -> str:
  """The dotted config field of a tuned knob ('1-beta' -> 'beta')."""
  return knob[len(COMPLEMENT) :] if knob.startswith(COMPLEMENT) else knob


def get_field(cfg, dotted: str):
  for part in dotted.split('.'):
    cfg = cfg[part]
  return cfg


def set_field(cfg, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  for part in parents:
    cfg = cfg[part]
  cfg[leaf] = value


def field_rule(cls: type, dotted: str):
  """The `jaxunlearn.config.Rule` of a dotted field of config class `cls`."""
  *parents, leaf = dotted.split('.')
  for part in parents:
    cls = typing.get_type_hints(cls)[part]
  return {f.name: f for f in dataclasses.fields(cls)}[leaf].metadata['rule']


def knob_values(knob: str, default, rule, multipliers: list[float]) -> list:
  """The values a knob takes: its default scaled by each multiplier (its complement for '1-'
  knobs), clipped to closed bounds, those beyond open bounds dropped, rounded for integers,
  duplicates dropped, in multiplier order."""
  values = []
  for m in multipliers:
    value = 1.0 - (1.0 - default) * m if knob.startswith(COMPLEMENT) else default * m
    if rule.low is not None and (value < rule.low or (rule.low_open and value == rule.low)):
      if rule.low_open:
        continue
      value = rule.low
    if rule.high is not None and (value > rule.high or (rule.high_open and value == rule.high)):
      if rule.high_open:
        continue
      value = rule.high
    value = int(round(value)) if rule.kind == 'int' else float(value)
    if value not in values:
      values.append(value)
  return values


def distance_to_default(values: dict, defaults: dict) -> float:
  """How far a combination lies from the defaults (sum of |log ratio|), for ties."""
  return sum(abs(math.log(max(values[k], 1e-12) / max(defaults[k], 1e-12))) for k in values)


def tune(config, split_seed: int, multipliers: list[float]) -> dict:
  """Runs every method's grid on `split_seed`, as the rows of one study (one data load, one
  Original and Retrain; its table is the split's tuning.json/.md).

  Returns:
    {method: {'knobs', 'defaults': {field: value}, 'trials': [{'values': {field: value},
    'AvgGap': gap}], 'skipped': [{'values', 'reason'}], 'chosen': {field: value}}}.
  """
  if split_seed == config.split_seed:
    raise jaxunlearn.ConfigError(
      f'--tune_split_seed={split_seed}: must differ from the reported '
      f'--config.split_seed ({config.split_seed}).'
    )
  trial_config = copy.deepcopy(config)
  trial_config.split_seed, trial_config.seeds = split_seed, '0'
  trial_config.results_name, trial_config.plot = 'tuning', False
  out, rows = {}, []
  for name in jaxunlearn.methods.parse_methods(config.methods):
    if name not in jaxunlearn.methods.names():
      continue  # a group of variants is not tuned
    method = jaxunlearn.methods.get(name)
    fields = [field_name(k) for k in method.tune]
    defaults = {f: get_field(config.method[name], f) for f in fields}
    grids = [
      knob_values(k, defaults[f], field_rule(method.config, f), multipliers)
      for k, f in zip(method.tune, fields)
    ]
    out[name] = {'knobs': list(method.tune), 'defaults': defaults, 'trials': [], 'skipped': []}
    for combination in itertools.product(*grids):
      values = dict(zip(fields, combination))
      cfg = copy.deepcopy(config.method[name])
      for field, value in values.items():
        set_field(cfg, field, value)
      row = f'{name} {_format(values)}'
      try:
        jaxunlearn.methods.parse_config(name, cfg)
      except jaxunlearn.ConfigError as error:
        out[name]['skipped'].append({'values': values, 'reason': str(error)})
        print(f'[tune {name}] skipped {_format(values)}: {error}', flush=True)
        continue
      rows.append((row, name, cfg))
      out[name]['trials'].append({'row': row, 'values': values})
  study = jaxunlearn.Study(trial_config, rows=rows)
  study.run()
  summary = study.summary()
  for name, entry in out.items():
    for trial in entry['trials']:
      trial['AvgGap'] = summary[trial.pop('row')]['AvgGap']['mean']
    best = min(
      entry['trials'],
      key=lambda t: (t['AvgGap'], distance_to_default(t['values'], entry['defaults'])),
    )
    entry['chosen'] = best['values']
    print(
      f'[tune {name}] '
      + '; '.join(f'{_format(t["values"])} -> {t["AvgGap"]:.2f}' for t in entry['trials'])
      + f'; chosen {_format(best["values"])}',
      flush=True,
    )
  return out


# Scores that time a run; they differ between runs of the same computation.
TIMING_SCORES = ('RTE_s',)


def check_same_references(earlier: dict, payload: dict) -> None:
  """Raises ConfigError unless the two results have the same split, seeds and, score by score,
  the same Original and Retrain rows (timings aside): only then do rows of one belong beside rows
  of the other."""
  if earlier['split'] != payload['split'] or earlier['seeds'] != payload['seeds']:
    raise jaxunlearn.ConfigError(
      f'--keep_from: the earlier results have split {earlier["split"]} and seeds '
      f'{earlier["seeds"]}; this run {payload["split"]} and {payload["seeds"]}.'
    )
  for row in REFERENCE_ROWS:
    for seed, (old, new) in zip(
      payload['seeds'], zip(earlier['per_seed'][row], payload['per_seed'][row])
    ):
      differ = sorted(k for k in set(old) & set(new) if k not in TIMING_SCORES and old[k] != new[k])
      if differ:
        raise jaxunlearn.ConfigError(
          f'--keep_from: {row} seed {seed} differs from the earlier run in {differ}: the kept '
          'rows would not be comparable; rerun every method instead.'
        )


def merge_results(earlier: dict, payload: dict, tuned: list[str]) -> dict:
  """`earlier`'s results with the rows of the `tuned` methods (and the config sections of those
  methods) taken from `payload`; a kept row lacking ToW gets it from its own scores and
  Retrain's. The payload records which rows came from which run."""
  check_same_references(earlier, payload)
  per_seed = {row: [dict(s) for s in scores] for row, scores in earlier['per_seed'].items()}
  for row, scores in payload['per_seed'].items():
    if row not in REFERENCE_ROWS:
      per_seed[row] = scores
  for scores in per_seed.values():
    for score, retrain in zip(scores, per_seed['Retrain']):
      score.setdefault('ToW', metrics.tow(score, retrain))
  config = copy.deepcopy(earlier['config'])
  for name in tuned:
    config['method'][name] = payload['config']['method'][name]
  kept = [row for row in earlier['per_seed'] if row not in REFERENCE_ROWS and row not in tuned]
  return {
    **payload,
    'config': config,
    'methods': earlier['methods'],
    'per_seed': per_seed,
    'summary': {row: summarise(scores) for row, scores in per_seed.items()},
    'merged': {
      'rows_of_this_run': list(REFERENCE_ROWS) + tuned,
      'rows_kept': kept,
      'kept_rows_made_with': {k: earlier.get(k) for k in ('versions', 'device', 'wall_seconds')},
      'this_run_config': payload['config'],
    },
  }


def keep_from(directory: str, study, payload: dict, choices: dict) -> None:
  """Merges this run into the earlier tuned.json/tuning.json of `directory` (`merge_results`)
  and rewrites them there with the table and figure."""
  with open(os.path.join(directory, 'tuned.json')) as f:
    earlier = json.load(f)
  with open(os.path.join(directory, 'tuning.json')) as f:
    earlier_tuning = json.load(f)
  merged = merge_results(earlier, payload, list(choices))
  title = study.title()
  report.write_results(
    directory,
    'tuned',
    merged,
    title=title,
    table=report.study_table(merged['summary'], class_wise=study.experiment.class_wise),
    note=report.TABLE_NOTE,
    figure=figures.trade_off_figure(merged['summary'], title),
  )
  jaxunlearn.write_json(
    os.path.join(directory, 'tuning.json'),
    {**earlier_tuning, 'methods': {**earlier_tuning['methods'], **choices}},
  )
  print(f'merged {", ".join(choices)} into {directory}/tuned.json')


def _format(values: dict) -> str:
  return ', '.join(f'{k}={v:g}' for k, v in values.items())


def main(argv):
  del argv
  config = _CONFIG.value
  jaxunlearn.Study(config)  # validates everything before any work
  choices = tune(config, _TUNE_SPLIT_SEED.value, [float(m) for m in _MULTIPLIERS.value])
  final = copy.deepcopy(config)
  final.results_name = 'tuned'
  for name, choice in choices.items():
    for field, value in choice['chosen'].items():
      set_field(final.method[name], field, value)
  study = jaxunlearn.Study(final)
  payload = study.run()
  jaxunlearn.write_json(
    os.path.join(study.experiment_dir, 'tuning.json'),
    {
      'tune_split_seed': _TUNE_SPLIT_SEED.value,
      'multipliers': _MULTIPLIERS.value,
      'methods': choices,
      'reported_split_seed': config.split_seed,
      'seeds': payload['seeds'],
    },
  )
  print(f'\n{study.title()}\n{study.table()}\n\n{report.TABLE_NOTE}\n')
  if _KEEP_FROM.value:
    keep_from(_KEEP_FROM.value, study, payload, choices)


if __name__ == '__main__':
  cli.run(main)
