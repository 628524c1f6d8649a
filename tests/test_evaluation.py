"""The one evaluation path: outputs equal a direct apply in the order of the positions asked for,
whatever the padding, batch size or mesh; feature distances and the many-model predictions."""

import jax
import numpy as np
import pytest

from jaxunlearn import evaluation, sharding
from jaxunlearn.data import preprocess


@pytest.fixture(scope='module')
def positions(tiny_experiment):
  """37 training positions in no particular order (a shuffled, padded-tail sample)."""
  rng = np.random.default_rng(0)
  return rng.permutation(len(tiny_experiment.train.labels))[:37]


def _direct(model_fns, variables, data, positions, **kwargs):
  images = preprocess(np.asarray(data.images)[positions], data.info, train=False, key=None)
  outputs, _ = model_fns.apply(variables, images, train=False, **kwargs)
  return jax.device_get(outputs)


def _feature_distances(experiment, model_fns, variables, reference, positions):
  """`evaluation.feature_distances` of `variables` to `reference` on the training images."""
  data = experiment.train
  return evaluation.feature_distances(
    model_fns,
    variables,
    model_fns,
    reference,
    data.images,
    data.info,
    positions,
    mesh=experiment.mesh,
    batch_size=16,
  )


def _predict(exp, original, positions, batch_size, mesh=None):
  data = exp.train if mesh is None else exp.on_mesh(mesh).train
  return evaluation.predict(
    *original,
    data.images,
    data.info,
    positions,
    mesh=exp.mesh if mesh is None else mesh,
    batch_size=batch_size,
  )


def test_predict_equals_a_direct_apply_in_the_order_asked(
  tiny_experiment, tiny_original, positions
):
  logits = _predict(tiny_experiment, tiny_original, positions, batch_size=16)
  assert isinstance(logits, np.ndarray) and logits.shape == (37, 10)
  expected = _direct(*tiny_original, tiny_experiment.train, positions)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_the_outputs(tiny_experiment, tiny_original, positions):
  whole = _predict(tiny_experiment, tiny_original, positions[:32], batch_size=16)
  # 21 positions in batches of 16: the second batch is padded with 11 copies of its first.
  padded = _predict(tiny_experiment, tiny_original, positions[:21], batch_size=16)
  np.testing.assert_array_equal(padded, whole[:21])
  one_by_one = _predict(tiny_experiment, tiny_original, positions[:21], batch_size=1)
  np.testing.assert_allclose(one_by_one, whole[:21], rtol=1e-5, atol=1e-5)


def test_eight_devices_and_an_odd_batch_size_give_the_same_outputs(
  tiny_experiment, tiny_original, positions
):
  one = _predict(tiny_experiment, tiny_original, positions, batch_size=16)
  # 20 is rounded down to 16 (two per device); 5 up to 8 (one per device).
  for batch_size in (20, 5):
    eight = _predict(
      tiny_experiment, tiny_original, positions, batch_size=batch_size, mesh=sharding.make_mesh()
    )
    np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)


def test_logits_on_every_source(tiny_experiment, tiny_original):
  test = tiny_experiment.test
  logits = evaluation.logits_on_sources(*tiny_original, test, mesh=tiny_experiment.mesh)
  assert set(logits) == {'test', 'test_forget', 'test_retain'}
  for name, values in logits.items():
    assert values.shape == (len(test.sources[name]), 10)
  np.testing.assert_array_equal(logits['test'][test.sources['test_forget']], logits['test_forget'])


def test_feature_distances_to_itself_are_zero(tiny_experiment, tiny_original, positions):
  model_fns, variables = tiny_original
  data = tiny_experiment.train
  distances, penultimate = _feature_distances(
    tiny_experiment, model_fns, variables, variables, positions
  )
  assert set(distances) == {'conv1', 'dense1'}  # every feature but the penultimate
  for values in distances.values():
    np.testing.assert_array_equal(values, np.zeros(37, np.float32))
  (_, features) = _direct(model_fns, variables, data, positions, return_features=True)
  np.testing.assert_allclose(penultimate, features['penultimate'], rtol=1e-5, atol=1e-5)


def test_feature_distances_are_norms_of_feature_differences(
  tiny_experiment, tiny_original, positions
):
  model_fns, variables = tiny_original
  other = jax.tree.map(lambda x: x * 1.1, variables)
  data = tiny_experiment.train
  distances, penultimate = _feature_distances(
    tiny_experiment, model_fns, other, variables, positions
  )
  (_, mine) = _direct(model_fns, other, data, positions, return_features=True)
  (_, reference) = _direct(model_fns, variables, data, positions, return_features=True)
  for name, values in distances.items():
    difference = (mine[name] - reference[name]).reshape(37, -1)
    np.testing.assert_allclose(values, np.linalg.norm(difference, axis=1), rtol=1e-4)
    assert np.all(values > 0)
  np.testing.assert_allclose(penultimate, mine['penultimate'], rtol=1e-5, atol=1e-5)


def test_predict_many_equals_predict_of_each_model(tiny_experiment, tiny_original, positions):
  model_fns, variables = tiny_original
  models = [variables, jax.tree.map(lambda x: x * 0.9, variables)]
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *models)
  mesh = sharding.make_model_mesh(2, jax.devices()[:4])
  data = tiny_experiment.on_mesh(mesh).train
  logits = evaluation.predict_many(
    model_fns, stacked, data.images, data.info, positions, mesh=mesh, batch_size=16
  )
  assert logits.shape == (2, 37, 10)
  for k, model in enumerate(models):
    one = _predict(tiny_experiment, (model_fns, model), positions, batch_size=16)
    np.testing.assert_allclose(logits[k], one, rtol=1e-5, atol=1e-5)
