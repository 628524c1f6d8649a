"""Honesty check on real data, random 10% forgetting: Retrain's forget set behaves like unseen
data (its UA is close to its test error)."""

from jaxunlearn import experiment
from tests.conftest import honesty_config


def test_retrain_forget_set_behaves_like_unseen_data(tmp_path, data_dir):
  setup = experiment.prepare(honesty_config(tmp_path, data_dir, 'random:0.1'))
  _, _, scores = setup.train_model('retrain', 0)
  test_error = 100.0 - scores['TA']
  assert abs(scores['UA'] - test_error) <= 2.0, scores
  assert scores['RA'] - (100.0 - scores['UA']) >= 0.5  # D_r is fit better than D_f
