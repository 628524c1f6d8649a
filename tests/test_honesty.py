"""Honesty checks on real data (mnist5k, small CNN, default method settings).

Class-wise forgetting of digit 3: Retrain's forget accuracy is ~0; GA, RL, SalUn and SCRUB bring
forget accuracy below 10% while keeping RA within 3 points of the original (GA: 3.5, see below);
FT keeps the test accuracy on the remaining classes. Random 10% forgetting is checked in
test_honesty_random.py (a file of its own, so that xdist runs the two trainings in parallel).
"""

import pytest

from jaxunlearn import experiment
from jaxunlearn.unlearn import run_method
from tests.conftest import honesty_config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp('honesty')


@pytest.fixture(scope='module')
def class_forgetting(workdir, data_dir):
  config = honesty_config(workdir, data_dir, 'class:3')
  setup = experiment.prepare(config)
  fns, original, original_scores = setup.train_model('original', 0)
  _, _, retrain_scores = setup.train_model('retrain', 0)
  return setup, fns, original, original_scores, retrain_scores, config.method


def test_retrain_does_not_know_the_forgotten_class(class_forgetting):
  _, _, _, original_scores, retrain_scores, _ = class_forgetting
  assert original_scores['TA'] >= 96.0
  assert retrain_scores['FA'] <= 1.0
  assert retrain_scores['TA_forget'] <= 1.0
  assert retrain_scores['TA_retain'] >= 96.0


# GA forgets the class only at the edge of collapse: at its setting the RA loss measured 3.0
# points (forget accuracy 5.5%), so its RA margin is 3.5 points; the others keep the 3 points.
@pytest.mark.parametrize(
  'name, ra_margin', [('ga', 3.5), ('rl', 3.0), ('salun', 3.0), ('scrub', 3.0)]
)
def test_forgetting_methods_forget_the_class_and_keep_the_rest(class_forgetting, name, ra_margin):
  setup, fns, original, original_scores, _, methods = class_forgetting
  scores = run_method(setup, name, methods[name], fns, original, seed=0).scores
  assert scores['FA'] < 10.0, scores
  assert scores['RA'] >= original_scores['RA'] - ra_margin, scores


def test_finetuning_keeps_remaining_class_accuracy(class_forgetting):
  setup, fns, original, original_scores, _, methods = class_forgetting
  scores = run_method(setup, 'ft', methods.ft, fns, original, seed=0).scores
  assert scores['TA_retain'] >= original_scores['TA_retain'] - 1.0, scores
