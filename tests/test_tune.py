"""jaxunlearn.tuning: the grids, the equal budget, edge extension, successive halving, merging."""

import json
import math
import os
import subprocess
import sys

import pytest

import jaxunlearn
from jaxunlearn import tuning
from jaxunlearn.config import ConfigError, Rule
from jaxunlearn.methods import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTIPLIERS = [0.3, 1.0, 3.0]
SEEDS = [3, 4]


def _rows():
  rows, _ = registry.method_rows(jaxunlearn.study_config().method, 'all', forget='class:3')
  return {row: cfg for row, method, cfg in rows}


def _search(method: str, max_knobs: int = 2) -> tuning.Search:
  return tuning.make_search(method, _rows()[method], MULTIPLIERS, max_knobs)


def test_every_method_gets_the_same_number_of_settings_within_its_rules():
  searches = {name: tuning.make_search(name, cfg, MULTIPLIERS, 2) for name, cfg in _rows().items()}
  tuning.check_budgets(searches)
  for name, search in searches.items():
    assert len(tuning.settings(search)) == 9, name
    for knob, axis in zip(search.knobs, search.axes):
      assert len(set(axis)) == len(axis) and all(knob.rule.allows(v) for v in axis), (name, axis)
  assert tuning.max_knobs() == 2
  # A one-knob method gets a finer grid over the same span: 9 values, the multipliers among them.
  lr = searches['ft'].axes[0]
  assert len(lr) == 9 and lr[0] == pytest.approx(0.006) and lr[-1] == pytest.approx(0.06)
  assert lr[4] == pytest.approx(0.02)
  ratios = [b / a for a, b in zip(lr, lr[1:])]
  assert ratios[:4] == pytest.approx([(1 / 0.3) ** 0.25] * 4, rel=1e-2)
  assert ratios[4:] == pytest.approx([3**0.25] * 4, rel=1e-2)


def test_refine_and_values_per_knob():
  assert tuning.refine([0.3, 1, 3], 3) == pytest.approx([0.3, 1, 3])
  assert tuning.values_per_knob(3, 1, 2) == 9 and tuning.values_per_knob(3, 2, 2) == 3
  assert tuning.values_per_knob(2, 1, 2) == 4
  with pytest.raises(ConfigError, match='--multipliers'):
    tuning.values_per_knob(3, 2, 3)  # 27 settings do not split into 2 equal axes
  with pytest.raises(ConfigError, match='--multipliers=1: give at least two'):
    tuning.parse_multipliers(['1'])


def _knob(name, default, rule, allows=None):
  return tuning.Knob(name, default, rule, allows or rule.allows)


OPEN_UNIT = Rule('float', 0, 1, low_open=True, high_open=True)


@pytest.mark.parametrize(
  'knob, expected',
  [
    (_knob('optimizer.lr', 0.01, Rule('float', 0, None, low_open=True)), (0.003, 0.01, 0.03)),
    # Past a closed bound: onto it.
    (_knob('mask_fraction', 0.5, Rule('float', 0, 1, low_open=True)), (0.15, 0.5, 1.0)),
    # At the bound already: the repeat is dropped and the grid topped up on the other side.
    (_knob('mask_fraction', 1.0, Rule('float', 0, 1, low_open=True)), (0.09, 0.3, 1.0)),
    # The complement is scaled (ascending in 1 - beta); past an open bound: halfway to it.
    (_knob('1-beta', 0.96, OPEN_UNIT), (0.988, 0.96, 0.88)),
    (_knob('beta', 0.96, OPEN_UNIT), (0.288, 0.96, 0.98)),
    # An integer the config refuses (msteps above epochs, 5) moves back to the nearest allowed.
    (_knob('msteps', 3, Rule('int', 0, None), lambda v: 0 <= v <= 5), (1, 3, 5)),
  ],
)
def test_knob_grid(knob, expected):
  assert tuning.knob_grid(knob, MULTIPLIERS, 3) == pytest.approx(expected)


def _gap(target: float, field: str = 'optimizer.lr'):
  """A run whose Avg. Gap is the distance in log space of a field from `target`."""

  def run(method, row, seed, config):
    return abs(math.log(jaxunlearn.config.get_field(config, field) / target)) + 0.01 * seed

  return run


def test_an_edge_that_wins_is_extended_until_the_choice_is_inside():
  search = _search('ft')
  assert search.axes[0][-1] == pytest.approx(0.06)
  done = tuning.run_searches({'ft': search}, SEEDS, _gap(0.1))['ft']
  record = tuning.search_record(done, SEEDS, 24)
  assert record['chosen']['optimizer.lr'] == pytest.approx(0.1, rel=0.15)
  assert record['edges'] == {'optimizer.lr': 'inside'}
  assert done.axes[0][-1] > record['chosen']['optimizer.lr'] > 0.06
  budget = record['budget']
  assert budget['grid_settings'] == 9 and budget['extension_settings'] >= 2
  assert budget['runs'] == budget['grid_runs'] + budget['extension_runs'] + budget['midpoint_runs']
  assert budget['runs'] == budget['runs_per_method'] == 24  # twice halving's 9 + 3


def test_extension_stops_at_a_closed_bound_and_at_the_run_budget():
  run = _gap(10.0, 'mask_fraction')  # the larger the better, past its bound 1
  done = tuning.run_searches({'salun': _search('salun')}, SEEDS, run)['salun']
  record = tuning.search_record(done, SEEDS, 24)
  assert record['chosen']['mask_fraction'] == 1.0
  assert record['edges']['mask_fraction'] == 'highest value (bound)'
  assert record['budget']['extension_settings'] == 0
  # Without runs left for an extension, the choice stays at the grid's edge and the record says
  # why: 12 runs of halving, then one extension (1 setting on 2 seeds + 1 pulled into the best
  # third = at most 3 runs) fits in 15 and the next does not.
  done = tuning.run_searches({'ft': _search('ft')}, SEEDS, _gap(10.0), runs_per_method=15)
  record = tuning.search_record(done['ft'], SEEDS, 15)
  assert record['edges'] == {'optimizer.lr': 'highest value (run budget)'}
  assert record['budget']['extension_settings'] == 1 and record['budget']['runs'] == 15


def test_halving_runs_the_best_third_on_more_seeds_and_chooses_by_their_mean():
  search = _search('ft')
  lrs = search.axes[0]
  # On seed 3 the lowest rate looks best; on seed 4 it is the worst of the finalists.
  first = {lr: 1.0 + i for i, lr in enumerate(lrs)}
  second = {lrs[0]: 9.0, lrs[1]: 1.5, lrs[2]: 2.5}

  def run(method, row, seed, config):
    lr = config.optimizer.lr
    return first[lr] if seed == SEEDS[0] else second[lr]

  done = tuning.run_searches({'ft': search}, SEEDS, run, runs_per_method=12)['ft']
  ran = {s[0]: sorted(by_seed) for s, by_seed in done.scores.items()}
  assert [lr for lr, seeds in ran.items() if seeds == SEEDS] == list(lrs[:3])
  assert tuning.choice(done, SEEDS) == (lrs[1],)
  assert tuning.budget(done, 12)['runs'] == 9 + 3
  assert tuning.mean_score(done, (lrs[1],), SEEDS) == pytest.approx(1.75)


def test_runs_left_go_to_the_next_settings_then_to_midpoints_by_the_better_neighbour():
  search = _search('ft')
  lrs = search.axes[0]
  best = lrs[4]
  # Inside the grid, best at its middle value; the higher neighbour scores better than the lower.
  gap = _gap(best * 1.1)
  done = tuning.run_searches({'ft': search}, SEEDS, gap, runs_per_method=24)['ft']
  # Every grid setting ran on both seeds (9 + 9), then 3 midpoints on both seeds (6).
  assert all(sorted(by_seed) == SEEDS for by_seed in done.scores.values())
  budget = tuning.budget(done, 24)
  assert budget['grid_runs'] == 18 and budget['midpoint_settings'] == 3
  assert budget['midpoint_runs'] == 6 and budget['extension_runs'] == 0
  # The first midpoint lies between the middle value and its better (higher) neighbour.
  added = sorted(set(done.axes[0]) - set(lrs))
  assert best < added[0] < lrs[5]
  assert tuning.choice(done, SEEDS)[0] == pytest.approx(best * 1.1, rel=0.05)
  # A two-knob method: a midpoint on one knob is crossed with the other knob's 3 values.
  two = tuning.run_searches({'salun': _search('salun')}, SEEDS, _gap(0.01), 24)['salun']
  assert tuning.budget(two, 24)['midpoint_settings'] == 3 and tuning.runs(two) == 24


def test_every_method_ends_with_the_same_number_of_runs():
  searches = {name: _search(name) for name in ('ft', 'salun', 'scrub', 'neggrad_plus')}
  done = tuning.run_searches(searches, SEEDS, _gap(0.5))  # far above every default lr
  assert {name: tuning.runs(s) for name, s in done.items()} == dict.fromkeys(searches, 24)
  record = tuning.tuning_record(
    done, SEEDS, multipliers=['0.3', '1', '3'], split_seed=1, runs_per_method=24
  )
  assert {m['budget']['runs'] for m in record['methods'].values()} == {24}
  assert record['runs_per_method'] == 24


def test_a_method_that_cannot_spend_its_runs_is_refused():
  done = tuning.run_searches({'ft': _search('ft')}, SEEDS, _gap(0.02), runs_per_method=12)
  tuning.check_spent(done, 12)
  with pytest.raises(ConfigError, match=r'--runs_per_method=13: ft 12 run\(s\) only'):
    tuning.check_spent(done, 13)
  with pytest.raises(ConfigError, match='--runs_per_method=11: .* takes 12 runs'):
    tuning.run_searches({'ft': _search('ft')}, SEEDS, _gap(0.02), runs_per_method=11)


def test_unequal_budgets_are_refused():
  one_knob_alone = _search('ft', max_knobs=1)  # 3 settings where the others have 9
  with pytest.raises(ConfigError, match=r'unequal numbers of settings \(ft 3, salun 9\)'):
    tuning.check_budgets({'ft': one_knob_alone, 'salun': _search('salun')})
  with pytest.raises(ConfigError, match='unequal'):
    tuning.run_searches({'ft': one_knob_alone, 'salun': _search('salun')}, SEEDS, _gap(0.01))
  with pytest.raises(ConfigError, match='--tune_seeds'):
    tuning.run_searches({'ft': _search('ft')}, [0], _gap(0.01))


def test_a_grid_that_does_not_fit_is_refused():
  with pytest.raises(ConfigError, match='only 3 distinct values fit'):
    tuning.knob_grid(_knob('msteps', 1, Rule('int', 0, 2)), MULTIPLIERS, 9)
  # SCRUB's msteps must stay <= its epochs: with 1 epoch only 0 and 1 fit, not 3 values.
  scrub = _rows()['scrub'].replace(epochs=1, msteps=1)
  with pytest.raises(ConfigError, match='--config.method.scrub: msteps: only 2 distinct values'):
    tuning.make_search('scrub', scrub, MULTIPLIERS, 2)


def _results(rows: dict, split_digest: str = 'd') -> dict:
  per_seed = {row: [dict(scores)] for row, scores in rows.items()}
  return {
    'config': {'method': {name: {'lr': i} for i, name in enumerate(rows)}},
    'methods': [r for r in rows if r not in ('Original', 'Retrain')],
    'seeds': [0],
    'split': {'digest': split_digest},
    'per_seed': per_seed,
    'summary': {},
  }


REFS = {
  'Original': {'UA': 40.0, 'RA': 80.0, 'TA': 70.0, 'RTE_s': 5.0},
  'Retrain': {'UA': 100.0, 'RA': 80.0, 'TA': 60.0, 'RTE_s': 4.0},
}


def test_merge_keeps_other_rows_replaces_tuned_ones_and_adds_tow():
  earlier = _results(
    {**REFS, 'a': {'UA': 90.0, 'RA': 80.0, 'TA': 60.0}, 'b': {'UA': 1.0, 'RA': 80.0, 'TA': 60.0}}
  )
  earlier['tuning_scores'] = {'a': 1.0, 'b': 2.0}
  new_refs = {k: {**v, 'RTE_s': 99.0} for k, v in REFS.items()}  # timings may differ
  payload = _results({**new_refs, 'a': {'UA': 100.0, 'RA': 70.0, 'TA': 60.0, 'ToW': 0.9}})
  payload['tuning_scores'] = {'a': 3.0}
  merged = tuning.merge_results(earlier, payload, ['a'])
  assert merged['per_seed']['a'] == [{'UA': 100.0, 'RA': 70.0, 'TA': 60.0, 'ToW': 0.9}]
  assert merged['per_seed']['b'][0]['ToW'] == pytest.approx(0.01)
  # Kept rows without ToW get it from their scores and Retrain's.
  assert merged['summary']['Original']['ToW']['mean'] == pytest.approx(0.4 * 1.0 * 0.9)
  assert merged['methods'] == ['a', 'b']
  assert merged['config']['method']['a'] == payload['config']['method']['a']
  assert merged['merged']['rows_kept'] == ['b']
  assert merged['tuning_scores'] == {'a': 3.0, 'b': 2.0}


def test_merge_refuses_different_references():
  earlier = _results({**REFS, 'a': {'UA': 1.0}})
  changed = {**REFS, 'Retrain': {**REFS['Retrain'], 'TA': 60.01}}
  with pytest.raises(ConfigError, match='Retrain seed 0 differs'):
    tuning.merge_results(earlier, _results({**changed, 'a': {'UA': 2.0}}), ['a'])
  with pytest.raises(ConfigError, match='split'):
    tuning.merge_results(earlier, _results({**REFS, 'a': {'UA': 2.0}}, 'other'), ['a'])


def test_merge_tuning_refuses_another_budget():
  done = tuning.run_searches({'ft': _search('ft')}, SEEDS, _gap(0.02))
  now = tuning.tuning_record(
    done, SEEDS, multipliers=['0.3', '1', '3'], split_seed=1, runs_per_method=24
  )
  earlier = {**now, 'methods': {'ga': {'chosen': {}}}}
  assert set(tuning.merge_tuning(earlier, now)['methods']) == {'ft', 'ga'}
  assert tuning.tuning_scores(now) == {'ft': now['methods']['ft']['tuning_score']}
  with pytest.raises(ConfigError, match=r"differs in \['settings_per_method'\]"):
    tuning.merge_tuning({**earlier, 'settings_per_method': 3}, now)
  with pytest.raises(ConfigError, match=r"differs in \['runs_per_method'\]"):
    tuning.merge_tuning({**earlier, 'runs_per_method': 18}, now)


def _tune(tmp_path, *flags):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.tune', f'--config.workdir={tmp_path / "wd"}', *flags],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )


@pytest.mark.parametrize(
  'flags, message',
  [
    (['--runs_per_method=5'], '--runs_per_method=5: successive halving on the grid takes 12'),
    (['--tune_split_seed=0'], '--tune_split_seed=0: must differ from the reported'),
    (['--tune_seeds=3'], '--tune_seeds=3: give at least two distinct seeds'),
  ],
)
def test_the_binary_refuses_a_bad_budget_or_seeds_before_any_work(tmp_path, flags, message):
  done = _tune(tmp_path, '--config.methods=ft,ga', *flags)
  assert done.returncode == 2, done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'error: {message}'), done.stderr
  assert not (tmp_path / 'wd').exists()


def test_the_binary_tunes_with_equal_runs_and_reports_the_choice(tmp_path, data_dir):
  flags = [
    '--config.dataset=digits',
    '--config.model=mlp',
    '--config.epochs=2',
    '--config.forget=class:3',
    '--config.seeds=0',
    '--config.methods=ga',
    '--config.num_devices=1',
    '--config.mia_classifier=logreg',
    f'--config.data_dir={data_dir}',
    '--runs_per_method=13',
  ]
  done = _tune(tmp_path, *flags)
  assert done.returncode == 0, done.stderr[-2000:]
  directory = tmp_path / 'wd' / 'digits-mlp' / 'class-3-split0'
  record = json.loads((directory / 'tuning.json').read_text())
  assert record['runs_per_method'] == 13 and record['tune_seeds'] == [1, 2]
  method = record['methods']['ga']
  assert method['budget']['runs'] == 13 and '[tune ga] chosen' in done.stdout
  # Halving's 9 + 3 runs, then the next setting in line on the seed it lacked.
  assert sum(len(t['per_seed']) for t in method['trials']) == 13
  assert sum(len(t['per_seed']) == 2 for t in method['trials']) == 4
  tuned = json.loads((directory / 'tuned.json').read_text())
  assert set(tuned['tuning_scores']) == {'ga'}
  assert tuned['config']['method']['ga']['optimizer']['lr'] == pytest.approx(
    record['methods']['ga']['chosen']['optimizer.lr']
  )
  assert 'AvgGap (tuning)' in (directory / 'tuned.md').read_text()
