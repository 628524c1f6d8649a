"""Data parallelism: device selection and batch sizes refused in one line, the meshes, replicated
and batch-sharded placement, the timed choice between layouts and its cache."""

import json
import os
import types

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxunlearn import sharding


def test_eight_host_devices():
  assert jax.device_count() == 8, 'run the tests with 8 forced host devices'


@pytest.mark.parametrize('count, expected', [(0, 8), (-1, 8), (1, 1), (3, 3), (8, 8)])
def test_select_devices_takes_the_first_ones(count, expected):
  assert sharding.select_devices(count) == jax.devices()[:expected]


@pytest.mark.parametrize('count', [-2, 9])
def test_select_devices_refuses_what_is_not_there_in_one_line(count):
  with pytest.raises(ValueError) as error:
    sharding.select_devices(count, '--config.eval.num_devices')
  assert str(error.value) == (
    f'--config.eval.num_devices={count}: allowed values are -1 (probed on CPU), 0 (all '
    'devices) to 8.'
  )


@pytest.mark.parametrize('batch_size', [60, 4, 0, -8])
def test_a_batch_that_does_not_split_over_the_devices_is_refused(batch_size):
  with pytest.raises(ValueError) as error:
    sharding.check_batch_size(batch_size, sharding.make_mesh())
  assert str(error.value) == (
    f'--config.batch_size={batch_size}: the batch size must be a positive multiple of the '
    'number of devices (8).'
  )


def test_batches_that_split_are_accepted():
  sharding.check_batch_size(64, sharding.make_mesh())
  sharding.check_batch_size(8, sharding.make_mesh())
  sharding.check_batch_size(3, sharding.make_mesh(jax.devices()[:1]))


def test_meshes():
  mesh = sharding.make_mesh()
  assert mesh.axis_names == (sharding.DATA_AXIS,) and mesh.devices.shape == (8,)
  two = sharding.make_mesh(jax.devices()[2:4])
  assert list(two.devices.flat) == jax.devices()[2:4]
  models = sharding.make_model_mesh(2)
  assert models.axis_names == (sharding.MODEL_AXIS, sharding.DATA_AXIS)
  assert models.devices.shape == (2, 4)
  assert sharding.make_model_mesh(0).devices.shape == (8, 1)
  assert sharding.make_model_mesh(2, jax.devices()[:4]).devices.shape == (2, 2)


@pytest.mark.parametrize('model_devices', [3, -1])
def test_a_model_axis_that_does_not_divide_the_devices_is_refused(model_devices):
  with pytest.raises(ValueError) as error:
    sharding.make_model_mesh(model_devices)
  assert str(error.value) == (
    f'--config.eval.model_devices={model_devices}: must divide the number of devices (8).'
  )


def test_replicate_puts_the_whole_tree_on_every_device():
  mesh = sharding.make_mesh()
  tree = {'w': np.arange(12.0).reshape(3, 4), 'b': np.float32(2.0)}
  placed = sharding.replicate(tree, mesh)
  for name, leaf in placed.items():
    assert leaf.sharding == sharding.replicated(mesh)
    assert leaf.sharding.spec == PartitionSpec()
    assert len(leaf.addressable_shards) == 8
    for shard in leaf.addressable_shards:
      np.testing.assert_array_equal(shard.data, tree[name])


def test_shard_global_batch_splits_the_leading_axis_in_order():
  mesh = sharding.make_mesh()
  batch = {'image': np.arange(16 * 3).reshape(16, 3), 'label': np.arange(16)}
  placed = sharding.shard_global_batch(batch, mesh)
  for name, leaf in placed.items():
    assert leaf.sharding == sharding.batch_sharded(mesh)
    assert leaf.shape == batch[name].shape
    np.testing.assert_array_equal(np.asarray(leaf), batch[name])
    shards = sorted(leaf.addressable_shards, key=lambda s: s.index[0].start)
    assert [s.device for s in shards] == list(mesh.devices.flat)
    for k, shard in enumerate(shards):
      np.testing.assert_array_equal(shard.data, batch[name][2 * k : 2 * k + 2])


def test_the_per_core_layout_keeps_a_device_count_forced_by_xla_flags():
  assert 'xla_force_host_platform_device_count=8' in os.environ.get('XLA_FLAGS', '')
  assert sharding.use_one_cpu_device_per_core() == 8 == jax.device_count()


def test_a_single_process_does_not_start_a_distributed_run(monkeypatch):
  def refuse(**kwargs):
    raise AssertionError('jax.distributed.initialize was called')

  monkeypatch.setattr(jax.distributed, 'initialize', refuse)
  sharding.maybe_initialize_distributed()
  sharding.maybe_initialize_distributed(None, None, 0)


# --- the timed choice between layouts -------------------------------------------------------


def _stubs(seconds_per_step, monkeypatch):
  """Runners that advance a fake clock by their seconds per step, and the order of their calls."""
  now, calls = [0.0], []
  monkeypatch.setattr(sharding, 'time', types.SimpleNamespace(perf_counter=lambda: now[0]))

  def stub(name):
    def run(n):
      calls.append((name, n))
      now[0] += seconds_per_step[name] * n

    return run

  return {name: stub(name) for name in seconds_per_step}, calls


def test_interleaved_rounds_alternate_the_order(monkeypatch):
  runners, calls = _stubs({'a': 0.5, 'b': 0.25}, monkeypatch)
  times = sharding.interleaved(runners, steps=2, rounds=4)
  assert times == {'a': [0.5] * 4, 'b': [0.25] * 4}
  assert [name for name, _ in calls] == ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']
  assert {n for _, n in calls} == {2}


def test_fastest_picks_the_quicker_of_two_stub_steps(monkeypatch):
  runners, calls = _stubs({'slow': 0.004, 'quick': 0.001}, monkeypatch)
  choice, seconds = sharding.fastest(runners, steps=2, rounds=3)
  assert choice == 'quick'
  assert seconds == pytest.approx({'slow': 0.004, 'quick': 0.001})
  # One warm-up step each, then rounds of 2 steps in alternating order.
  assert calls == [
    ('slow', 1),
    ('quick', 1),
    ('slow', 2),
    ('quick', 2),
    ('quick', 2),
    ('slow', 2),
    ('slow', 2),
    ('quick', 2),
  ]


def test_the_layout_cache_stores_a_record_per_key(tmp_path, monkeypatch):
  monkeypatch.setenv('JAXUNLEARN_CACHE_DIR', str(tmp_path / 'cache'))
  assert sharding.layout_cache_path() == str(tmp_path / 'cache' / 'cpu_layouts.json')
  key = {**sharding.machine_key(), 'model': 'cnn', 'batch_size': 64}
  assert sharding.cached_layout(key) is None
  sharding.store_layout(key, {'choice': '1 device'})
  sharding.store_layout({**key, 'batch_size': 128}, {'choice': '8 devices'})
  reordered = dict(reversed(list(key.items())))
  assert sharding.cached_layout(reordered) == {'choice': '1 device'}
  assert sharding.cached_layout({**key, 'batch_size': 128}) == {'choice': '8 devices'}
  assert sorted(os.listdir(tmp_path / 'cache')) == ['cpu_layouts.json']
  with open(sharding.layout_cache_path()) as f:
    assert len(json.load(f)) == 2


def test_an_unreadable_layout_cache_is_probed_again(tmp_path, monkeypatch):
  monkeypatch.setenv('JAXUNLEARN_CACHE_DIR', str(tmp_path))
  (tmp_path / 'cpu_layouts.json').write_text('{"truncated": ')
  assert sharding.cached_layout({'model': 'cnn'}) is None
  sharding.store_layout({'model': 'cnn'}, {'choice': '1 device'})
  assert sharding.cached_layout({'model': 'cnn'}) == {'choice': '1 device'}


def test_the_machine_key_names_what_a_layout_speed_depends_on():
  key = sharding.machine_key()
  assert set(key) == {'cpu', 'cores', 'cpu_devices', 'jax', 'jaxlib', 'xla_flags'}
  assert key['cpu_devices'] == 8 and key['cores'] == sharding.schedulable_cores() >= 1
  assert key['jax'] == jax.__version__
  json.dumps(key)  # a key of the cache file
