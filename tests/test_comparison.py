"""jaxunlearn.comparison: paired tests over seeds, tie groups, the ranking in groups, transfer."""

import math

import numpy as np
import pytest

from jaxunlearn import comparison, report


def _per_seed(gaps: dict) -> dict:
  return {row: [{'AvgGap': g} for g in values] for row, values in gaps.items()}


# Seed 1 is hard for every method (its Retrain is far), as on the CIFAR-10 tables: a, b and c
# move together, so pairing by seed separates c although the per-row stds are large.
GAPS = {
  'Original': [30.0, 31.0, 29.0],
  'Retrain': [0.0, 0.0, 0.0],
  'a': [0.2, 2.2, 0.3],
  'b': [0.2, 2.2, 0.3],
  'c': [1.2, 3.3, 1.2],
  'far': [18.0, 20.0, 19.0],
}


def test_paired_p_value():
  assert comparison.paired_p_value([1, 2, 3], [1, 2, 3]) == 1.0
  assert comparison.paired_p_value([1, 2, 3], [2, 3, 4]) == 0.0  # every seed: 1 apart
  assert math.isnan(comparison.paired_p_value([1, math.nan, 3], [1, 2, math.nan]))
  # The textbook case: differences 1, 2, 3 give t = 2 / (1 / sqrt 3), 2 degrees of freedom.
  assert comparison.paired_p_value([2, 4, 6], [1, 2, 3]) == pytest.approx(0.0742, abs=1e-4)


def test_identical_rows_are_tied_and_far_apart_rows_differ():
  scores = comparison.seed_scores(_per_seed(GAPS), exclude=report.REFERENCE_ROWS)
  assert list(scores) == ['a', 'b', 'c', 'far']
  letters = comparison.tie_groups(scores)
  assert letters['a'] == letters['b'] == 'a'
  assert not set(letters['far']) & set(letters['a'])
  assert comparison.ranked_groups(scores) == [['a', 'b'], ['c'], ['far']]
  line = comparison.ranking_in_groups(scores)
  assert 'tied first: a 0.90, b 0.90; then: c 1.90; then: far 19.00.' in line
  assert 'paired t-test' in line and 'level 0.05' in line and '3 seeds' in line


def test_letters_overlap_where_the_ties_do():
  # x ~ y and y ~ z, but x and z differ: y shares a letter with each.
  scores = {
    'x': np.array([1.0, 1.1, 0.9]),
    'y': np.array([1.5, 3.0, 0.5]),
    'z': np.array([2.0, 2.1, 1.9]),
  }
  assert comparison.tie_groups(scores) == {'x': 'a', 'y': 'ab', 'z': 'b'}
  assert comparison.ranked_groups(scores) == [['x', 'y'], ['z']]


def test_rows_not_run_on_every_seed_are_left_out_and_one_seed_shows_no_groups():
  per_seed = _per_seed({'a': [1.0, 2.0], 'b': [1.0]})
  assert list(comparison.seed_scores(per_seed)) == ['a']
  assert comparison.seed_scores(_per_seed({'a': [1.0], 'b': [2.0]})) == {}
  assert comparison.ranking_in_groups({}) == ''


def test_study_table_marks_groups_and_tuning_transfer():
  per_seed = _per_seed(GAPS)
  summary = {row: {'AvgGap': _summary(v)} for row, v in GAPS.items()}
  table = report.study_table(summary, class_wise=False, per_seed=per_seed, tuning={'c': 9.0})
  lines = table.splitlines()
  assert lines[0].startswith('| Method | UA | RA | TA | MIA | AvgGap | Group | AvgGap (tuning) |')
  assert lines[3].startswith('| Retrain | - | - | - | - | 0.00 ± 0.00 |  |  |')
  assert lines[4].startswith('| a | - | - | - | - | 0.90 ± 0.92 | a |  |')
  assert lines[6].startswith('| c | - | - | - | - | 1.90 ± 0.99 | b | 9.00 (!) |')
  note = report.study_note(per_seed, tuning=True)
  assert 'paired t-test over seeds, level 0.05' in note and '(!)' in note
  # One seed: no group column, and the note does not speak of groups.
  one = {row: values[:1] for row, values in per_seed.items()}
  assert 'Group' not in report.study_table(summary, class_wise=False, per_seed=one)
  assert report.study_note(one) == report.TABLE_NOTE
  # More rows than letters (a tuning study's trials): no group column, no groups in the note.
  many = {f'r{i}': [float(i), i + 0.1, i - 0.1] for i in range(report.MAX_GROUPED_ROWS + 1)}
  many_summary = {row: {'AvgGap': _summary(v)} for row, v in many.items()}
  table = report.study_table(many_summary, class_wise=False, per_seed=_per_seed(many))
  assert 'Group' not in table and report.study_note(_per_seed(many)) == report.TABLE_NOTE


def _summary(values):
  return {'mean': float(np.mean(values)), 'std': float(np.std(values)), 'n': len(values)}


def test_transfer_flags_a_reported_mean_outside_two_stds():
  summary = {'a': {'AvgGap': {'mean': 1.0, 'std': 0.5, 'n': 3}}, 'b': {}}
  assert comparison.transfer({'a': 1.9}, summary)['a']['outside'] is False
  assert comparison.transfer({'a': 2.1}, summary)['a']['outside'] is True
  assert comparison.transfer({'b': 1.0, 'missing': 1.0}, summary) == {}
  one_seed = {'a': {'AvgGap': {'mean': 1.0, 'std': 0.0, 'n': 1}}}
  assert comparison.transfer({'a': 5.0}, one_seed)['a']['outside'] is None
