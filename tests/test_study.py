"""A study: results files rebuilt from the run store, a completed run reused only under its own
fingerprint, a partial study tabulated, the Original left untouched, the lock against a second
study, and a missing model refused before training."""

import copy
import hashlib
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import jaxunlearn
from jaxunlearn import report, weight_files
from jaxunlearn.config import ConfigError
from tests.conftest import tiny_study_config


def _tree_digest(directory):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(directory)):
    for name in sorted(files):
      with open(os.path.join(root, name), 'rb') as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


def _write_lock(experiment_dir, pid):
  with open(os.path.join(experiment_dir, 'study.lock'), 'w') as f:
    json.dump({'host': socket.gethostname(), 'pid': pid}, f)


def _run_files(experiment_dir):
  """{run directory: mtime of its run.json}."""
  runs_dir = os.path.join(experiment_dir, 'runs')
  return {
    name: os.stat(os.path.join(runs_dir, name, 'run.json')).st_mtime_ns
    for name in os.listdir(runs_dir)
  }


@pytest.fixture(scope='module')
def completed(tmp_path_factory, data_dir):
  """FT and GA over seeds 0 and 1, run once in a workdir where a killed study left its lock."""
  config = tiny_study_config(
    tmp_path_factory.mktemp('study'), data_dir, methods='ft,ga', seeds='0,1'
  )
  study = jaxunlearn.Study(config)
  os.makedirs(study.experiment_dir, exist_ok=True)
  ended = subprocess.Popen([sys.executable, '-c', ''])
  ended.wait()
  _write_lock(study.experiment_dir, ended.pid)
  payload = study.run()
  return study, payload


def _side_config(study, **overrides):
  """The config of another study on the completed study's experiment, with its own results
  files."""
  config = copy.deepcopy(study.config)
  config.update({'plot': False, 'results_name': 'side', **overrides})
  return config


def _side(study, **overrides):
  return jaxunlearn.Study(_side_config(study, **overrides))


def _row_config(study, row):
  return {name: cfg for name, _, cfg in study.rows}[row]


def test_the_study_writes_its_results_and_takes_over_a_stale_lock(completed):
  study, payload = completed
  exp_dir = os.path.join(study.training.workdir, 'digits-cnn', 'random-0.1-split0')
  assert study.experiment_dir == exp_dir
  assert not os.path.exists(os.path.join(exp_dir, 'study.lock'))
  for name in ('results.json', 'results.md', 'results.png', 'split.npz', 'split.json'):
    assert os.path.exists(os.path.join(exp_dir, name)), name
  with open(os.path.join(exp_dir, 'results.json')) as f:
    saved = json.load(f)
  assert saved['split']['digest'] == payload['split']['digest']
  assert set(saved['summary']) == {'Original', 'Retrain', 'ft', 'ga'}
  assert saved['summary']['ft']['UA']['n'] == 2
  assert saved['summary']['Retrain']['AvgGap']['mean'] == 0.0
  assert 'jax' in saved['versions'] and saved['device']['platform'] == 'cpu'
  with open(os.path.join(exp_dir, 'results.md')) as f:
    table = f.read()
  assert '| ft |' in table and '±' in table
  note = study.table_note()
  assert note.startswith(report.TABLE_NOTE) and note in table
  assert 'The Original is read from' not in note


def test_a_second_run_reuses_every_run_and_leaves_the_original_untouched(completed, capsys):
  study, payload = completed
  original_dir = os.path.join(study.training.workdir, 'digits-cnn', 'original_s0')
  before, run_files = _tree_digest(original_dir), _run_files(study.experiment_dir)
  config = copy.deepcopy(study.config)
  config.no_train = True
  again = jaxunlearn.Study(config).run()
  assert _tree_digest(original_dir) == before
  assert _run_files(study.experiment_dir) == run_files
  out = capsys.readouterr().out
  for row in ('ft s0', 'ft s1', 'ga s0', 'ga s1'):
    assert f'[{row}] reused' in out
  np.testing.assert_allclose(
    again['summary']['ga']['UA']['mean'], payload['summary']['ga']['UA']['mean']
  )
  assert again['per_seed'] == payload['per_seed']


def test_fingerprints_are_stable_and_name_the_run_directory(completed):
  study, _ = completed
  ft = _row_config(study, 'ft')
  fingerprint = study.fingerprint('ft', ft, 0)
  assert _side(study).fingerprint('ft', ft, 0) == fingerprint  # another Study object
  assert os.path.isdir(study.store.run_dir('ft', 0, fingerprint))
  others = {
    study.fingerprint('ft', ft, 1),
    study.fingerprint('ga', ft, 0),
    study.fingerprint('ft', ft.replace(epochs=2), 0),
    study.fingerprint('ft', None, 0),
  }
  assert fingerprint not in others and len(others) == 4


def test_a_changed_method_config_is_a_new_run(completed, capsys):
  study, _ = completed
  run_files = _run_files(study.experiment_dir)
  config = _side_config(study, methods='ft', seeds='0')
  config.method.ft.epochs = 2
  side = jaxunlearn.Study(config)
  scores = side.run()['per_seed']['ft'][0]
  assert '[ft s0] reused' not in capsys.readouterr().out
  added = set(_run_files(study.experiment_dir)) - set(run_files)
  fingerprint = side.fingerprint('ft', _row_config(side, 'ft'), 0)
  assert added == {os.path.basename(side.store.run_dir('ft', 0, fingerprint))}
  assert scores['steps'] == 2 * study.per_seed()['ft'][0]['steps']


def test_rerun_all_redoes_a_completed_run_with_the_same_scores(completed, capsys):
  study, payload = completed
  run_files = _run_files(study.experiment_dir)
  redone = _side(study, methods='ga', seeds='0', rerun='all').run()
  assert '[ga s0] reused' not in capsys.readouterr().out
  ga = os.path.basename(
    study.store.run_dir('ga', 0, study.fingerprint('ga', _row_config(study, 'ga'), 0))
  )
  assert _run_files(study.experiment_dir)[ga] != run_files[ga]
  strip = lambda scores: {k: v for k, v in scores.items() if not k.endswith('_s')}  # seconds
  assert strip(redone['per_seed']['ga'][0]) == strip(payload['per_seed']['ga'][0])


def test_a_partial_study_tabulates_what_is_completed(completed):
  study, payload = completed
  partial = _side(study, methods='ft,ga,rl', seeds='0,1,2', only_report=True)
  run_files = _run_files(study.experiment_dir)
  written = partial.run()
  assert _run_files(study.experiment_dir) == run_files  # ran nothing
  assert not os.path.exists(os.path.join(study.experiment_dir, 'retrain_s2'))
  per_seed = partial.per_seed()
  assert set(per_seed) == {'Original', 'Retrain', 'ft', 'ga'}  # rl not run; seed 2 not trained
  assert per_seed['ft'] == payload['per_seed']['ft'] and len(per_seed['Retrain']) == 2
  assert written['per_seed'] == per_seed
  with open(os.path.join(study.experiment_dir, 'side.md')) as f:
    table = f.read()
  assert '| ga |' in table and '| rl |' not in table


def test_the_table_note_names_an_original_read_from_a_file(completed, tmp_path):
  study, _ = completed
  state = nnx.to_pure_dict(nnx.state(study.experiment.module(0)))
  path = str(tmp_path / 'original.npz')
  np.savez(
    path, **{k.replace('.', '/'): np.asarray(v) for k, v in weight_files._flatten(state).items()}
  )
  from_file = _side(study, original=path)
  digest = weight_files.file_digest(path)
  note = from_file.table_note()
  assert note.startswith(report.TABLE_NOTE)
  assert note.endswith(
    f' The Original is read from {path} (sha256 {digest[:16]}), not trained; Retrain is '
    'trained from scratch on D_r by the training recipe.'
  )


def test_a_second_study_on_the_same_workdir_is_refused(completed):
  study, _ = completed
  run_files = _run_files(study.experiment_dir)
  _write_lock(study.experiment_dir, os.getpid())  # a live study on this host
  try:
    with pytest.raises(ConfigError, match=rf'another study \(pid {os.getpid()} on .*\) is running'):
      _side(study, methods='ft,ga,rl').run()
  finally:
    os.remove(os.path.join(study.experiment_dir, 'study.lock'))
  assert _run_files(study.experiment_dir) == run_files


def test_no_train_without_retrain_model_is_refused(tmp_path, data_dir):
  config = tiny_study_config(tmp_path, data_dir, methods='ft', no_train=True)
  with pytest.raises(ConfigError, match='--config.no_train'):
    jaxunlearn.Study(config).run()
  assert not (tmp_path / 'digits-cnn' / 'original_s0').exists()


def test_a_relative_workdir_works_and_the_weights_restore(tmp_path, data_dir, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = tiny_study_config('wd', data_dir, methods='ft', seeds='0')
  study = jaxunlearn.Study(config)
  study.run()
  weights = study.unlearned('ft', 0)
  assert jax.tree.structure(weights) == jax.tree.structure(study.original().variables)


def test_study_config_overrides_nested_keys():
  config = jaxunlearn.study_config(
    epochs=3, **{'method.ft.epochs': 4, 'method__ga__batch_size': 32}
  )
  assert config.epochs == 3 and config.method.ft.epochs == 4 and config.method.ga.batch_size == 32
  assert jaxunlearn.study_config().method.ft.epochs != 4
