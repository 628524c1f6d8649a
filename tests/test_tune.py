"""experiments/tune.py: every method's knobs and the values the budget rule gives them."""

import pytest

import jaxunlearn
from experiments import tune
from jaxunlearn.config import Rule

MULTIPLIERS = [0.3, 1.0, 3.0]


def test_every_knob_is_a_field_of_its_method_and_the_grid_is_at_most_three_by_three():
  config = jaxunlearn.study_config()
  for name, method in jaxunlearn.methods.methods().items():
    assert 1 <= len(method.tune) <= 2, name
    for knob in method.tune:
      field = tune.field_name(knob)
      rule = tune.field_rule(method.config, field)
      values = tune.knob_values(knob, tune.get_field(config.method[name], field), rule, MULTIPLIERS)
      assert 1 <= len(values) <= 3 and all(rule.allows(v) for v in values), (name, knob, values)
  assert jaxunlearn.methods.get('rfa_lora').tune == ('optimizer.lr', 'gamma')


@pytest.mark.parametrize(
  'knob, default, rule, expected',
  [
    ('optimizer.lr', 0.01, Rule('float', 0, None, low_open=True), [0.003, 0.01, 0.03]),
    # Clipped to a closed bound, then duplicates dropped.
    ('mask_fraction', 0.5, Rule('float', 0, 1, low_open=True), [0.15, 0.5, 1.0]),
    ('mask_fraction', 1.0, Rule('float', 0, 1, low_open=True), [0.3, 1.0]),
    # The complement is scaled; values beyond an open bound are dropped.
    ('1-beta', 0.96, Rule('float', 0, 1, low_open=True, high_open=True), [0.988, 0.96, 0.88]),
    ('beta', 0.96, Rule('float', 0, 1, low_open=True, high_open=True), [0.288, 0.96]),
    ('msteps', 3, Rule('int', 0, None), [1, 3, 9]),
  ],
)
def test_knob_values(knob, default, rule, expected):
  assert tune.knob_values(knob, default, rule, MULTIPLIERS) == pytest.approx(expected)


def test_ties_go_to_the_combination_nearest_the_defaults():
  defaults = {'lr': 0.01, 'gamma': 1.0}
  assert tune.distance_to_default({'lr': 0.01, 'gamma': 3.0}, defaults) < tune.distance_to_default(
    {'lr': 0.03, 'gamma': 3.0}, defaults
  )
  assert tune.distance_to_default(defaults, defaults) == 0.0


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
  new_refs = {k: {**v, 'RTE_s': 99.0} for k, v in REFS.items()}  # timings may differ
  payload = _results({**new_refs, 'a': {'UA': 100.0, 'RA': 70.0, 'TA': 60.0, 'ToW': 0.9}})
  merged = tune.merge_results(earlier, payload, ['a'])
  assert merged['per_seed']['a'] == [{'UA': 100.0, 'RA': 70.0, 'TA': 60.0, 'ToW': 0.9}]
  assert merged['per_seed']['b'][0]['ToW'] == pytest.approx(0.01)
  # Kept rows without ToW get it from their scores and Retrain's.
  assert merged['summary']['Original']['ToW']['mean'] == pytest.approx(0.4 * 1.0 * 0.9)
  assert merged['methods'] == ['a', 'b']
  assert merged['config']['method']['a'] == payload['config']['method']['a']
  assert merged['merged']['rows_kept'] == ['b']


def test_merge_refuses_different_references():
  earlier = _results({**REFS, 'a': {'UA': 1.0}})
  changed = {**REFS, 'Retrain': {**REFS['Retrain'], 'TA': 60.01}}
  with pytest.raises(jaxunlearn.ConfigError, match='Retrain seed 0 differs'):
    tune.merge_results(earlier, _results({**changed, 'a': {'UA': 2.0}}), ['a'])
  with pytest.raises(jaxunlearn.ConfigError, match='split'):
    tune.merge_results(earlier, _results({**REFS, 'a': {'UA': 2.0}}, 'other'), ['a'])
