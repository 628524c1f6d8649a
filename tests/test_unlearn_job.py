"""The main job, experiments/unlearn.py: results files, reuse of trained models, bad input."""

import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxunlearn
from jaxunlearn import experiment
from jaxunlearn.config import ConfigError, parse_seeds
from jaxunlearn.methods.registry import parse_methods
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(workdir, data_dir, **overrides):
  c = jaxunlearn.study_config()
  tiny = tiny_config(workdir, data_dir)
  for key in (
    'workdir',
    'data_dir',
    'dataset',
    'model_kwargs',
    'batch_size',
    'epochs',
    'checkpoint_every_steps',
    'log_every',
    'mia_classifier',
    'num_devices',
  ):
    c[key] = tiny[key]
  for name in c.method:
    if 'epochs' in c.method[name]:
      c.method[name].epochs = 1
    c.method[name].batch_size = 64
  for key, value in overrides.items():
    c[key] = value
  return c


def _tree_digest(directory):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


def test_job_writes_results_and_leaves_the_original_untouched(tmp_path, data_dir):
  config = _config(tmp_path, data_dir, methods='ft,ga', seeds='0,1')
  payload = jaxunlearn.Study(config).run()
  exp_dir = tmp_path / 'digits-cnn' / 'random-0.1-split0'
  for name in ('results.json', 'results.md', 'results.png', 'split.npz', 'split.json'):
    assert (exp_dir / name).exists(), name
  with open(exp_dir / 'results.json') as f:
    saved = json.load(f)
  assert saved['split']['digest'] == payload['split']['digest']
  assert set(saved['summary']) == {'Original', 'Retrain', 'ft', 'ga'}
  assert saved['summary']['ft']['UA']['n'] == 2
  assert saved['summary']['Retrain']['AvgGap']['mean'] == 0.0
  assert 'jax' in saved['versions'] and saved['device']['platform'] == 'cpu'
  table = (exp_dir / 'results.md').read_text()
  assert '| ft |' in table and '±' in table
  original_dir = tmp_path / 'digits-cnn' / 'original_s0'
  before = _tree_digest(original_dir)
  config.no_train = True
  again = jaxunlearn.Study(config).run()  # reuses the trained models and the runs
  assert _tree_digest(original_dir) == before
  np.testing.assert_allclose(
    again['summary']['ga']['UA']['mean'], payload['summary']['ga']['UA']['mean']
  )


def test_unknown_method_is_refused():
  with pytest.raises(ConfigError, match='--config.methods.*unknown'):
    parse_methods('ft,forgetful')


@pytest.mark.parametrize('seeds', ['', '0,0', 'a', '-1'])
def test_bad_seeds_are_refused(seeds):
  with pytest.raises(ConfigError, match='--config.seeds'):
    parse_seeds(seeds)


def test_option_a_method_does_not_take_is_refused():
  result = subprocess.run(
    [sys.executable, '-m', 'experiments.unlearn', '--config.method.ga.beta=0.5'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  assert 'beta' in result.stderr


def test_no_train_without_retrain_model_is_refused(tmp_path, data_dir):
  config = _config(tmp_path, data_dir, methods='ft', no_train=True)
  with pytest.raises(ConfigError, match='--config.no_train'):
    jaxunlearn.Study(config).run()
  assert not (tmp_path / 'digits-cnn' / 'original_s0').exists()


def test_forget_set_other_than_the_experiments_is_refused(tmp_path, data_dir):
  path = tmp_path / 'forget.npy'
  np.save(path, np.arange(0, 100))
  config = _config(tmp_path, data_dir, forget=f'indices:{path}')
  experiment.prepare(config)
  np.save(path, np.arange(100, 200))  # same spec string, other examples
  with pytest.raises(ValueError, match='--config.forget.*different split'):
    experiment.prepare(config)


def test_a_relative_workdir_works_and_the_weights_restore(tmp_path, data_dir, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = _config('wd', data_dir, methods='ft', seeds='0')
  study = jaxunlearn.Study(config)
  study.run()
  weights = study.unlearned('ft', 0)
  assert jax.tree.structure(weights) == jax.tree.structure(study.original().variables)
