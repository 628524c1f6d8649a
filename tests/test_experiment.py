"""One experiment: its directory layout, `prepare` (the split, the mesh, bad input refused before
anything is written, the CPU layout probe), the Original trained once and reused, its record and
its representation scores."""

import json
import os

import jax
import numpy as np
import pytest

from jaxunlearn import data, experiment, sharding
from jaxunlearn.config import ConfigError, DataConfig, TrainingConfig
from tests.conftest import tiny_config


@pytest.mark.parametrize(
  'spec, tag',
  [
    ('random:0.1', 'random-0.1'),
    ('random:300', 'random-300'),
    ('class:3', 'class-3'),
    ('class:3,5', 'class-3-5'),
    ('indices:/data/my forget.npy', 'indices-data-my-forget.npy'),
  ],
)
def test_forget_tag_is_directory_safe(spec, tag):
  assert experiment.forget_tag(spec) == tag


def test_directories_follow_the_layout():
  data_config = DataConfig(forget='class:3,5', split_seed=2, train_subset=500)
  training = TrainingConfig(workdir='/runs', model='tests.user_model:Net')
  assert experiment.directories(data_config, training, 'my/data') == (
    '/runs/my-data-subset500-tests.user_model-Net',
    '/runs/my-data-subset500-tests.user_model-Net/class-3-5-split2',
  )


def test_prepare_places_the_split_on_the_mesh_and_writes_it(tiny_experiment):
  exp = tiny_experiment
  workdir = exp.training.workdir
  assert exp.model_dir == os.path.join(workdir, 'digits-cnn')
  assert exp.experiment_dir == os.path.join(workdir, 'digits-cnn', 'class-3-split0')
  assert data.load_forget_split(exp.experiment_dir).digest == exp.split.digest
  labels = np.asarray(exp.train.labels)
  sources = exp.train.sources
  np.testing.assert_array_equal(sources['all'], np.arange(len(labels)))
  assert np.all(labels[sources['forget']] == 3) and not np.any(labels[sources['retain']] == 3)
  assert len(sources['forget']) + len(sources['retain']) == len(labels)
  assert exp.class_wise
  test_labels = np.asarray(exp.test.labels)
  np.testing.assert_array_equal(exp.test_forget_mask(), test_labels == 3)
  np.testing.assert_array_equal(exp.test.sources['test_forget'], np.flatnonzero(test_labels == 3))
  assert exp.mesh.devices.size == 1  # tiny_config asks for one device
  assert exp.train.images.sharding.mesh.devices.size == 1


def test_on_mesh_moves_the_data_and_nothing_else(tiny_experiment):
  mesh = sharding.make_mesh()
  moved = tiny_experiment.on_mesh(mesh)
  assert moved.mesh is mesh and moved.train.images.sharding.mesh is mesh
  assert moved.test.images.sharding.mesh is mesh
  np.testing.assert_array_equal(
    np.asarray(moved.train.images), np.asarray(tiny_experiment.train.images)
  )
  assert (
    moved.split is tiny_experiment.split and moved.experiment_dir == tiny_experiment.experiment_dir
  )


def test_random_forgetting_is_not_class_wise(tmp_path, data_dir):
  exp = experiment.prepare(tiny_config(tmp_path, data_dir, forget='random:0.1'))
  assert not exp.class_wise and exp.test_forget_mask() is None
  assert set(exp.test.sources) == {'test'}


def test_forget_set_other_than_the_experiments_is_refused(tmp_path, data_dir):
  path = tmp_path / 'forget.npy'
  np.save(path, np.arange(0, 100))
  config = tiny_config(tmp_path / 'wd', data_dir, forget=f'indices:{path}')
  experiment.prepare(config)
  np.save(path, np.arange(100, 200))  # same spec string, other examples
  with pytest.raises(ValueError, match='--config.forget.*different split'):
    experiment.prepare(config)


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(dataset='imagenet'), '--config.dataset=imagenet'),
    (dict(model='resnet50'), 'model'),
    (dict(forget='random:1.5'), '--config.forget'),
    (dict(forget='random:0'), '--config.forget'),
    (dict(forget='random:99999'), '--config.forget'),
    (dict(forget='class:12'), '--config.forget'),
    (dict(forget='class:0,1,2,3,4,5,6,7,8,9'), '--config.forget'),
    (dict(forget='bogus'), '--config.forget'),
    (dict(forget='indices:/nonexistent.npy'), '--config.forget'),
    (dict(batch_size=60, num_devices=0), '--config.batch_size'),
    (dict(num_devices=9), '--config.num_devices'),
  ],
)
def test_bad_input_is_refused_before_training(tmp_path, data_dir, overrides, message):
  with pytest.raises(ValueError, match=message.replace('.', r'\.')):
    experiment.prepare(tiny_config(tmp_path, data_dir, **overrides))
  assert not (tmp_path / 'digits-cnn' / 'original_s0').exists()


def test_empty_forget_set_is_refused(tmp_path, data_dir):
  empty = tmp_path / 'empty.npy'
  np.save(empty, np.array([], np.int64))
  with pytest.raises(ValueError, match='--config.forget'):
    experiment.prepare(tiny_config(tmp_path, data_dir, forget=f'indices:{empty}'))


# --- the Original and Retrain -----------------------------------------------------------------


def test_a_trained_model_is_loaded_not_trained_again(tiny_experiment, tiny_original):
  directory = tiny_experiment.model_run_dir('original', 0)
  assert directory == os.path.join(tiny_experiment.model_dir, 'original_s0')
  assert tiny_experiment.is_trained('original', 0)
  with open(os.path.join(directory, 'metrics.json')) as f:
    saved = json.load(f)
  fns, variables, scores = tiny_experiment.train_model('original', 0)
  assert scores == saved  # run_seconds included: read back, not measured again
  jax.tree.map(np.testing.assert_array_equal, variables, tiny_original[1])
  with open(os.path.join(directory, 'config.json')) as f:
    assert json.load(f) == json.loads(json.dumps(tiny_experiment.record()))
  assert tiny_experiment.trained('original', 0) is tiny_experiment.trained('original', 0)


def test_a_missing_model_with_no_train_is_one_line(tiny_experiment):
  assert not tiny_experiment.is_trained('retrain', 7)
  path = os.path.join(tiny_experiment.experiment_dir, 'retrain_s7', 'metrics.json')
  with pytest.raises(ConfigError) as error:
    tiny_experiment.trained('retrain', 7, no_train=True)
  assert str(error.value) == (
    f'--config.no_train is set but the retrain model (seed 7) is missing: {path} does not '
    'exist. Train it with experiments.train, or drop no_train.'
  )
  assert not os.path.exists(os.path.dirname(path))


def test_checkpoint_of_another_architecture_is_refused(tiny_experiment, tiny_original, data_dir):
  wider = tiny_config(tiny_experiment.training.workdir, data_dir, forget='class:3')
  wider.model_kwargs.dense_width = 32
  setup = experiment.prepare(wider)
  with pytest.raises(ValueError, match='--config.workdir.*model_signature'):
    setup.train_model('original', 0)


def test_record_names_the_settings_and_devices(tiny_experiment):
  record = tiny_experiment.record()
  assert set(record) == {
    'data',
    'training',
    'evaluation',
    'model_kwargs',
    'features',
    'original_file',
    'init_file',
    'devices',
  }
  assert record['data']['forget'] == 'class:3' and record['training']['model'] == 'cnn'
  assert record['devices'] == ['cpu:0']
  assert [f['name'] for f in record['features']] == ['conv1', 'dense1', 'penultimate']
  assert record['original_file'] is None and record['init_file'] is None
  json.dumps(record)


def test_a_model_has_no_representation_distance_to_itself(tiny_experiment, tiny_original):
  fns, variables = tiny_original
  references = {'original': tiny_experiment.penultimate_features(fns, variables)}
  assert references['original']['forget'].shape == (
    len(tiny_experiment.train.sources['forget']),
    16,
  )
  scores = tiny_experiment.representation_scores(fns, variables, variables, references)
  for suffix in ('r', 'f'):
    assert scores[f'FD_{suffix}'] == 0.0
    assert scores[f'FD_{suffix}/conv1'] == 0.0 and scores[f'FD_{suffix}/dense1'] == 0.0
    assert scores[f'CKA_original_{suffix}'] == pytest.approx(1.0, abs=1e-5)
  moved = jax.tree.map(lambda x: x * 1.1, variables)
  assert tiny_experiment.representation_scores(fns, moved, variables, references)['FD_r'] > 0


# --- the CPU layout probe ---------------------------------------------------------------------


def test_probe_cpu_layout_places_the_experiment_and_caches_the_choice(
  tiny_experiment, tmp_path, monkeypatch
):
  monkeypatch.setenv('JAXUNLEARN_CACHE_DIR', str(tmp_path))
  on_all = tiny_experiment.on_mesh(sharding.make_mesh())
  picks = []

  def pick(candidates, **kwargs):
    assert sorted(candidates) == ['1 device', '8 devices']
    for run_steps in candidates.values():
      run_steps(1)  # the actual training step runs on both layouts
    picks.append('1 device')
    return '1 device', {'1 device': 0.01, '8 devices': 0.02}

  monkeypatch.setattr(sharding, 'fastest', pick)
  probed = experiment.probe_cpu_layout(on_all)
  assert probed.mesh.devices.size == 1 and probed.train.images.sharding.mesh.devices.size == 1
  again = experiment.probe_cpu_layout(on_all)  # from the cache: no second probe
  assert again.mesh.devices.size == 1 and picks == ['1 device']
  with open(sharding.layout_cache_path()) as f:
    [record] = json.load(f).values()
  assert record == {'choice': '1 device', 'seconds_per_step': {'1 device': 0.01, '8 devices': 0.02}}


def test_prepare_probes_the_cpu_layout_only_when_the_batch_splits(tmp_path, data_dir, monkeypatch):
  monkeypatch.setenv('JAXUNLEARN_CACHE_DIR', str(tmp_path / 'cache'))
  probed = []

  def pick_all(candidates, **kwargs):
    probed.append(sorted(candidates))
    return '8 devices', {name: 0.0 for name in candidates}

  monkeypatch.setattr(sharding, 'fastest', pick_all)
  split = experiment.prepare(tiny_config(tmp_path / 'a', data_dir, num_devices=-1, batch_size=64))
  assert split.mesh.devices.size == 8 and probed == [['1 device', '8 devices']]
  odd = experiment.prepare(tiny_config(tmp_path / 'b', data_dir, num_devices=-1, batch_size=60))
  assert odd.mesh.devices.size == 1 and len(probed) == 1  # 60 does not split over 8: no probe
