r"""Tuning against Retrain on a held-out split (the rule of `jaxunlearn.tuning`), then the study.

  python -m experiments.tune --config=experiments/configs/cifar10_subset.py \
      --config.forget=random:0.1 --config.seeds=0,1,2 --tune_split_seed=1

Every method of --config.methods tunes every knob it declares with the same number of settings
and of runs (--runs_per_method), on split seed --tune_split_seed and the seeds --tune_seeds (by
default the two smallest seeds not among --config.seeds, so that no tuning run is a reported
run), by successive halving, with grids whose best value sits on an edge extended and the runs
left spent on the next-best settings and midpoints (`jaxunlearn.tuning` states the rule). Every
trial is a row of one tuning study (its tuning.md lies in the tuning split's directory); every
trial, choice, edge and budget is in tuning.json, beside the reported results. Then the config's study runs with each method's
choice on its own split seed and seeds (results name 'tuned'): tuned.md shows each method's
tuning score beside its reported Avg. Gap, flagged where it did not transfer, and the groups of
methods that its seeds cannot tell apart. Groups of variants (e.g. sfron_ablation) are not tuned.

To retune some methods of a committed table (after one of them changed), run those with
--config.methods and --keep_from=DIR (the directory of its tuned.json and tuning.json): the other
rows and choices are kept, once this run's Original and Retrain rows are checked equal to the
earlier run's score by score and its tuning rule and budget equal to the earlier one's.

A smoke run on the built-in digits (an MLP, a few epochs, three methods):

  python -m experiments.tune --config.workdir=/tmp/tune_smoke --config.dataset=digits \
      --config.model=mlp --config.epochs=5 --config.forget=class:3 --config.seeds=0,1 \
      --config.methods=ft,ga,salun --config.num_devices=1
"""

import copy
import json
import os
import time

from absl import flags

import jaxunlearn
from jaxunlearn import cli, comparison, figures, report, tuning
from jaxunlearn.config import parse_seeds, set_leaf

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'unlearn.py'), 'Study config file.'
)
_TUNE_SPLIT_SEED = flags.DEFINE_integer('tune_split_seed', 1, 'The split the tuning runs on.')
_TUNE_SEEDS = flags.DEFINE_string(
  'tune_seeds',
  '',
  "Seeds of the tuning runs, at least 2; the first scores every setting. '' = the two smallest "
  'seeds not among --config.seeds.',
)
_MULTIPLIERS = flags.DEFINE_list(
  'multipliers', ['0.3', '1', '3'], "Scales of each knob's default that make the grids."
)
_RUNS_PER_METHOD = flags.DEFINE_integer(
  'runs_per_method',
  -1,
  "Every method's number of tuning runs (-1: twice successive halving's on the grid, 24 for 9 "
  'settings and 2 seeds).',
)
_KEEP_FROM = flags.DEFINE_string(
  'keep_from',
  '',
  'A directory holding an earlier tuned.json and tuning.json of the same protocol: the methods '
  "not tuned now keep their choices and reported rows from it (after checking that this run's "
  'Original and Retrain rows and tuning rule equal its own), and the merged files are written '
  'there.',
)


def tune_seeds(config) -> list[int]:
  """--tune_seeds, or the two smallest seeds not among the reported ones."""
  if _TUNE_SEEDS.value:
    seeds = parse_seeds(_TUNE_SEEDS.value, '--tune_seeds')
    tuning.check_seeds(seeds)
    return seeds
  reported = set(parse_seeds(config.seeds))
  return [s for s in range(len(reported) + 2) if s not in reported][:2]


def run_tuning(config, searches: dict, seeds: list[int], runs_per_method: int) -> dict:
  """Runs every search to its choice, each run a row of one study on the tuning split, and
  writes that study's table (results name 'tuning')."""
  trial_config = copy.deepcopy(config)
  trial_config.split_seed, trial_config.seeds = _TUNE_SPLIT_SEED.value, ','.join(map(str, seeds))
  trial_config.results_name, trial_config.plot = 'tuning', False
  grid_rows = [
    (tuning.row_name(search, s), name, tuning.config_of(search, s))
    for name, search in searches.items()
    for s in tuning.settings(search)
  ]
  study = jaxunlearn.Study(trial_config, rows=grid_rows)
  study.check_methods()
  trials = {}

  def run(method, row, seed, method_config) -> float:
    trials[row] = (row, method, method_config)
    return study.run_row(row, method, method_config, seed)['AvgGap']

  start = time.perf_counter()
  with study.store.lock():
    for seed in seeds:
      study.reference_rows(seed)
    searches = tuning.run_searches(searches, seeds, run, runs_per_method)
    study.rows = list(trials.values())  # the tuning table: every trial, on the seeds it ran
    study.wall_seconds += time.perf_counter() - start
    study.write_results()
  return searches


def tuned_files(directory: str, title: str, payload: dict, class_wise: bool) -> str:
  """Rewrites tuned.json/.md/.png of `directory` with the tuning column (the picture drawn from
  every row, kept and new); returns the table."""
  table = report.study_table(
    payload['summary'],
    class_wise=class_wise,
    per_seed=payload['per_seed'],
    tuning=payload['tuning_scores'],
  )
  note = report.study_note(payload['per_seed'], tuning=True)
  figure = figures.trade_off_figure(payload['summary'], title)
  report.write_results(
    directory, 'tuned', payload, title=title, table=table, note=note, figure=figure
  )
  return table


def keep_from(directory: str, study, payload: dict, record: dict) -> None:
  """Merges this run into the earlier tuned.json/tuning.json of `directory` and rewrites them
  there."""
  with open(os.path.join(directory, 'tuned.json')) as f:
    earlier = json.load(f)
  with open(os.path.join(directory, 'tuning.json')) as f:
    earlier_tuning = json.load(f)
  merged_tuning = tuning.merge_tuning(earlier_tuning, record)
  merged = tuning.merge_results(earlier, payload, list(record['methods']))
  tuned_files(directory, study.title(), merged, study.experiment.class_wise)
  jaxunlearn.write_json(os.path.join(directory, 'tuning.json'), merged_tuning)
  print(f'merged {", ".join(record["methods"])} into {directory}/tuned.json')


def main(argv):
  del argv
  config = _CONFIG.value
  jaxunlearn.Study(config)  # validates everything before any work
  if _TUNE_SPLIT_SEED.value == config.split_seed:
    raise jaxunlearn.ConfigError(
      f'--tune_split_seed={_TUNE_SPLIT_SEED.value}: must differ from the reported '
      f'--config.split_seed ({config.split_seed}).'
    )
  seeds = tune_seeds(config)
  multipliers = tuning.parse_multipliers(_MULTIPLIERS.value)
  # A tuning starts where the tuned presets' own tuning did, so its command reproduces its record.
  rows, presets = jaxunlearn.methods.method_rows(
    config.method, config.methods, forget=config.forget, dataset=config.dataset, tuned=False
  )
  print(jaxunlearn.methods.describe_presets(presets, config.forget, config.dataset))
  searches = {
    row: tuning.make_search(row, cfg, multipliers, tuning.max_knobs())
    for row, method, cfg in rows
    if row == method  # a variant of a group is not tuned
  }
  if not searches:
    raise jaxunlearn.ConfigError(
      f'--config.methods={config.methods}: names no method to tune (groups are not tuned).'
    )
  tuning.check_budgets(searches)
  runs_per_method = _RUNS_PER_METHOD.value
  if runs_per_method < 0:
    runs_per_method = tuning.default_runs_per_method(searches, seeds)
  tuning.check_runs_per_method(searches, seeds, runs_per_method)
  if _KEEP_FROM.value:  # before any work: the kept methods must have had the same budget
    path = os.path.join(_KEEP_FROM.value, 'tuning.json')
    if not os.path.exists(path):
      raise jaxunlearn.ConfigError(f'--keep_from={_KEEP_FROM.value}: it holds no tuning.json.')
    with open(path) as f:
      earlier_rule = json.load(f)
    tuning.check_same_rule(
      earlier_rule,
      tuning.rule_record(
        searches,
        seeds,
        multipliers=_MULTIPLIERS.value,
        split_seed=_TUNE_SPLIT_SEED.value,
        runs_per_method=runs_per_method,
      ),
    )
  searches = run_tuning(config, searches, seeds, runs_per_method)

  chosen = {name: tuning.choice(search, seeds) for name, search in searches.items()}
  record = tuning.tuning_record(
    searches,
    seeds,
    multipliers=_MULTIPLIERS.value,
    split_seed=_TUNE_SPLIT_SEED.value,
    runs_per_method=runs_per_method,
  )
  for name, entry in record['methods'].items():
    print(
      f'[tune {name}] chosen {tuning.describe(searches[name], chosen[name])}: tuning Avg. Gap '
      f'{entry["tuning_score"]:.2f} over seeds {",".join(map(str, seeds))}; budget '
      f'{entry["budget"]}; edges {entry["edges"]}',
      flush=True,
    )

  final = copy.deepcopy(config)
  final.results_name = 'tuned'
  final_rows = []
  for row, method, cfg in rows:
    if row in searches:
      cfg = tuning.config_of(searches[row], chosen[row])
      for field, value in tuning.values(searches[row], chosen[row]).items():
        set_leaf(final.method[row], field, value)  # what results files record of the choice
    final_rows.append((row, method, cfg))
  study = jaxunlearn.Study(final, rows=final_rows)
  payload = study.run()
  payload['tuning_scores'] = tuning.tuning_scores(record)
  table = tuned_files(study.experiment_dir, study.title(), payload, study.experiment.class_wise)
  jaxunlearn.write_json(
    os.path.join(study.experiment_dir, 'tuning.json'),
    {**record, 'reported_split_seed': config.split_seed, 'seeds': payload['seeds']},
  )
  scores = comparison.seed_scores(payload['per_seed'], exclude=report.REFERENCE_ROWS)
  print(f'\n{study.title()}\n{table}\n\n{comparison.ranking_in_groups(scores)}\n')
  print(f'{report.study_note(payload["per_seed"], tuning=True)}\n')
  if _KEEP_FROM.value:
    keep_from(_KEEP_FROM.value, study, payload, record)


if __name__ == '__main__':
  cli.run(main)
