"""Tests of `jaxunlearn.benchmarking`: what a benchmark JSON holds, on a tiny CNN."""

import pytest

import jaxunlearn
from jaxunlearn import benchmarking
from tests import study_worker


def test_benchmark_times_each_row_and_two_batch_steps_at_equal_examples(tmp_path, data_dir):
  config = study_worker.config(tmp_path, data_dir)
  config.methods = 'ft,rfa_lora'
  config.method.ft.batch_size = 32
  config.method.rfa_lora.batch_size = 32
  study = jaxunlearn.Study(config)
  results = benchmarking.benchmark(study.experiment, study.rows, 2, equal_examples=True)
  assert set(results) == {'retrain_step', 'ft', 'rfa_lora'}
  assert 'equal_examples' not in results['ft']  # one batch per step: nothing to equalise
  align = results['rfa_lora']['kinds']['align']
  assert align['examples_per_s'] == pytest.approx(2 * 32 * align['steps_per_s'])
  equal = results['rfa_lora']['equal_examples']
  assert equal['batch_size_per_slot'] == 16
  equal_align = equal['kinds']['align']
  assert equal_align['examples_per_s'] == pytest.approx(2 * 16 * equal_align['steps_per_s'])
  ref_step = results['retrain_step']['kinds']['train']['step_s']
  assert equal_align['step_time_vs_retrain_step'] == pytest.approx(equal_align['step_s'] / ref_step)


def test_time_ratios_of_interleaved_rounds():
  times = {'jax': [1.0, 3.0, 2.0], 'torch': [2.0, 2.0, 8.0]}
  ratios = benchmarking.time_ratios(times, 'jax', 'torch')
  assert ratios == {
    'step_s': 2.0,
    'ratio': 0.5,  # rounds: 0.5, 1.5, 0.25
    'ratio_of_minima': 0.5,
    'speedup': 2.0,  # rounds: 2, 2/3, 4
  }


def test_differences_of_two_implementations():
  nan = float('nan')
  # A loss neither side computed (NaN on both) is skipped; a tiny reference is floored at 1e-6.
  assert benchmarking.relative_difference([nan, 2.2, 1e-7], [nan, 2.0, 0.0]) == pytest.approx(0.1)
  assert benchmarking.relative_difference([nan], [nan]) == 0.0
  reference = {'w': [3.0, 0.0], 'b': [4.0]}
  assert benchmarking.parameter_difference({'w': [3.0, 1.0], 'b': [4.0]}, reference) == 0.2
