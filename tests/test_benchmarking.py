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
