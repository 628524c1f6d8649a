"""Many models in one program: K-run equals K single runs (exactly, on 8 devices), compiles once,
the model axis sharded equals one device, both forms agree, the form rules, and the many-model
evaluation end to end with bad input."""

import functools
import os

import jax
import numpy as np
import pytest

import jaxunlearn
from jaxunlearn import many_models, sharding
from jaxunlearn.config import ConfigError, from_config_dict
from jaxunlearn.loop import run, run_many, use_vmap
from jaxunlearn.methods import registry
from tests.conftest import tiny_config

# vmap changes the order of float32 sums inside convolutions and matmuls; after one epoch the
# K-run's models are within a few float32 ulps of the single runs (measured: <= 2.5e-7).
ATOL = 2e-6


def _cfg(name):
  cfg = registry.get(name).config().replace(batch_size=64)
  return cfg.replace(epochs=1) if hasattr(cfg, 'epochs') else cfg.replace(iterations=8)


def _single_params(tiny_experiment, tiny_original, name, seed):
  """The parameters of one run of `name` with `seed` on the tiny experiment's own mesh."""
  one = registry.get(name).build(
    tiny_experiment.context(*tiny_original, seed=seed, batch_size=64), _cfg(name)
  )
  single = run(
    one.program,
    one.state,
    tiny_experiment.train,
    mesh=tiny_experiment.mesh,
    seed=seed,
    constants=one.constants,
    log_every=1000,
  )
  return jax.device_get(single.state.params)


@pytest.mark.parametrize('name', ['ft', 'sfron', 'rfa_lora'])
@pytest.mark.parametrize('form', ['vmap', 'unroll'])
def test_k_run_equals_k_single_runs(tiny_experiment, tiny_original, name, form):
  seeds = [3, 5]
  mesh = sharding.make_model_mesh(2, jax.devices()[:4])
  many_setup = tiny_experiment.on_mesh(mesh)
  plans = [
    registry.get(name).build(many_setup.context(*tiny_original, seed=s, batch_size=64), _cfg(name))
    for s in seeds
  ]
  many = run_many(
    plans[0].program,
    [p.state for p in plans],
    many_setup.train,
    mesh=mesh,
    seeds=seeds,
    constants=[p.constants for p in plans],
    log_every=1000,
    form=form,
  )
  for k, seed in enumerate(seeds):
    jax.tree.map(
      lambda a, b, k=k: np.testing.assert_allclose(np.asarray(b)[k], a, atol=ATOL, rtol=0),
      _single_params(tiny_experiment, tiny_original, name, seed),
      jax.device_get(many.state.params),
    )


def test_compiles_once_per_step_kind_and_sharded_equals_one_device(tiny_experiment, tiny_original):
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, fun_name=None, **kw: (
      compiles.append(fun_name) if name == '/jax/core/compile/backend_compile_duration' else None
    )
  )
  seeds = list(range(4))
  results = {}
  for label, mesh in (
    ('one', sharding.make_model_mesh(1, jax.devices()[:1])),
    ('four', sharding.make_model_mesh(4, jax.devices()[:4])),
  ):
    many_setup = tiny_experiment.on_mesh(mesh)
    cfg = _cfg('sfron').replace(forget_every=2)  # two step kinds
    plans = [
      registry.get('sfron').build(many_setup.context(*tiny_original, seed=s, batch_size=64), cfg)
      for s in seeds
    ]
    compiles.clear()
    results[label] = run_many(
      plans[0].program,
      [p.state for p in plans],
      many_setup.train,
      mesh=mesh,
      seeds=seeds,
      constants=[p.constants for p in plans],
      log_every=1000,
    )
    assert compiles.count('jit(one_model)') + compiles.count('jit(mapped)') == 2, set(compiles)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL, rtol=0),
    jax.device_get(results['one'].state.params),
    jax.device_get(results['four'].state.params),
  )


def _study(tmp_path, data_dir, methods='ft,salun'):
  config = jaxunlearn.study_config(
    methods=methods, **tiny_config(tmp_path / 'wd', data_dir, forget='class:3')
  )
  for name in ('ft', 'salun'):
    config.method[name].update(epochs=1, batch_size=64)
  return jaxunlearn.Study(config)


def test_many_model_evaluation_end_to_end(tmp_path, data_dir):
  cfg = many_models.ManyModelsConfig(num_models=4, model_devices=2, relearn_steps=5)
  study = _study(tmp_path, data_dir)
  payload = study.many_models(cfg)
  rows = payload['rows']
  assert list(rows) == ['Retrain', 'Control', 'Original', 'ft', 'salun']
  for name in ('Control', 'Original', 'ft', 'salun'):
    assert 0.0 <= rows[name]['F_low'] <= rows[name]['F'] <= rows[name]['F_high'] <= 1.0
    assert rows[name]['K'] == 4 and 0.0 <= rows[name]['ToW'] <= 1.0
    assert rows[name]['KLOM_forget_median'] >= 0 and 0 <= rows[name]['relearn_steps'] <= 5
    assert len(payload['epsilons'][name]) == len(study.experiment.split.forget)
  # A second set of Retrain models is closer to Retrain than models that saw the class.
  assert rows['Control']['F'] > rows['Original']['F']
  assert rows['Control']['AvgGap'] < rows['Original']['AvgGap']
  # Retrain never saw a 3, and SalUn forgets it.
  assert rows['Retrain']['UA'] > 95 and rows['salun']['UA'] > 90
  directory = os.path.join(study.experiment_dir, 'many_K4')
  for ext in ('json', 'md', 'png'):
    assert os.path.exists(os.path.join(directory, f'many_models.{ext}'))


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'num_models': 2}, '--config.eval.num_models=2: must be an integer >= 3.'),
    ({'relearn_steps': 0}, '--config.eval.relearn_steps=0: must be an integer >= 1.'),
    (
      {'num_models': 6, 'model_devices': 4},
      '--config.eval.num_models=6: must be a multiple of the model devices (4).',
    ),
    ({'model_devices': 3}, '--config.eval.model_devices=3: must divide the number of devices'),
  ],
)
def test_bad_input_is_one_line_before_work(tmp_path, data_dir, overrides, message):
  values = {**jaxunlearn.config.to_config_dict(many_models.ManyModelsConfig()), **overrides}
  with pytest.raises(ConfigError) as error:
    many_models.model_mesh(from_config_dict(many_models.ManyModelsConfig, values, '--config.eval'))
  assert str(error.value).startswith(message) and '\n' not in str(error.value)


def test_auto_form_unrolls_convolutions_on_cpu_and_vmaps_dense_models():
  conv = {'kernel': np.zeros((3, 3, 1, 8)), 'bias': np.zeros(8)}
  dense = {'kernel': np.zeros((64, 10)), 'bias': np.zeros(10)}
  assert jax.default_backend() == 'cpu'
  assert not use_vmap('auto', {'conv': conv, 'head': dense})
  assert use_vmap('auto', {'head': dense})
  assert use_vmap('vmap', {'conv': conv})
  with pytest.raises(ValueError, match="form='both'"):
    use_vmap('both', {})


@pytest.mark.parametrize('form', ['unroll', 'vmap'])
def test_k_runs_on_eight_devices_equal_k_single_runs(tiny_experiment, tiny_original, form):
  seeds = list(range(8))
  mesh = sharding.make_model_mesh(8)
  many_setup = tiny_experiment.on_mesh(mesh)
  plans = [
    registry.get('ft').build(many_setup.context(*tiny_original, seed=s, batch_size=64), _cfg('ft'))
    for s in seeds
  ]
  many = run_many(
    plans[0].program,
    [p.state for p in plans],
    many_setup.train,
    mesh=mesh,
    seeds=seeds,
    log_every=1000,
    form=form,
  )
  # Unrolled, each model runs the single run's own program: bit for bit. Vmapped, a convolution
  # with per-model kernels is one grouped convolution, whose sums XLA:CPU may order differently
  # on some processors: equal to float32 rounding.
  if form == 'unroll':
    check = np.testing.assert_array_equal
  else:
    check = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7)
  for k, seed in enumerate(seeds):
    jax.tree.map(
      lambda a, b, k=k: check(np.asarray(b)[k], a),
      _single_params(tiny_experiment, tiny_original, 'ft', seed),
      jax.device_get(many.state.params),
    )
