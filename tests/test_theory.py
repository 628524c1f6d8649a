"""Tests of jaxunlearn.theory (linear-regression theory of fine-tuning for unlearning)."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl

from jaxunlearn import theory
from jaxunlearn.config import ConfigError, from_config_dict, to_config_dict


@pytest.fixture(scope='module', autouse=True)
def _single_threaded_blas():
  # Small matrices: BLAS threads only add synchronisation (much slower on a busy machine).
  with threadpoolctl.threadpool_limits(1, user_api='blas'):
    yield


# One task shape for most tests, so that each dtype compiles the batched helpers once.
_D, _N_R, _N_F, _SEEDS = 120, 30, 12, 4


def _tasks(d_lap, seed, **kwargs):
  return theory.make_tasks(
    jax.random.key(seed), theory.TaskSpec(d=_D, n_r=_N_R, n_f=_N_F, d_lap=d_lap, **kwargs), _SEEDS
  )


@jax.jit
def _endpoints_and_losses(tasks, alpha=1.0):
  ends = jax.vmap(theory.closed_form_endpoints, in_axes=(0, None))(tasks, alpha)
  return ends, jax.vmap(theory.endpoint_losses)(tasks, ends)


_remedy_starts = jax.jit(jax.vmap(theory.remedy_start, in_axes=(0, 0, None)), static_argnums=2)
_learning_rates = jax.jit(jax.vmap(theory.default_learning_rate, in_axes=(0, None)))


def test_mse_and_gap_hand_computed():
  x = jnp.array([[1.0, 0.0], [0.0, 2.0]])
  y = jnp.array([1.0, 1.0])
  # residuals (0 - 1, 2 - 1) -> mean of squares 1; normalisation is 1/n, no 1/2.
  assert float(theory.mse(jnp.array([0.0, 1.0]), x, y)) == pytest.approx(1.0)
  task = theory.LinRegTask(
    x, y, x, 2 * y, jnp.zeros(2), jnp.zeros(2), jnp.ones(2, bool), jnp.ones(2, bool)
  )
  # L(0, D_f) = mean(2^2) = 4; L(w, D_f) with w = (2, 1): residuals (0, 0) -> 0; gap 4.
  assert float(theory.gap_to_golden(jnp.array([2.0, 1.0]), jnp.zeros(2), task)) == (
    pytest.approx(4.0)
  )


@pytest.mark.parametrize('d_lap', [0, 30])
def test_finetuning_from_pretrained_changes_nothing(d_lap):
  tasks = _tasks(d_lap, seed=0)
  ends, losses = _endpoints_and_losses(tasks)
  np.testing.assert_allclose(ends['ft'], ends['pretrained'], atol=1e-5)
  assert float(jnp.max(losses['remaining_loss']['ft'])) < 1e-9
  assert float(jnp.max(losses['unlearning_loss']['ft'])) < 1e-9
  assert float(jnp.min(losses['unlearning_loss']['golden'])) > 0.1
  if d_lap == 0:
    # Distinct features: w_g is zero on D_f's features, so L(w_g, D_f) = (1/n_f) ||y_f||^2.
    np.testing.assert_allclose(
      losses['unlearning_loss']['golden'], jnp.mean(jnp.square(tasks.y_f), axis=1), rtol=1e-5
    )


def test_distinct_features_remedies_equal_golden_float64():
  default_dtype = jnp.zeros(1).dtype
  with jax.enable_x64(True):
    tasks = _tasks(0, seed=1, noise_std=0.1)
    assert tasks.x_r.dtype == jnp.float64
    ends, losses = _endpoints_and_losses(tasks)
    for option in theory.REMEDY_OPTIONS:
      assert float(jnp.max(jnp.abs(ends[f'remedy_{option}'] - ends['golden']))) < 1e-10
      assert float(jnp.max(losses['gap_to_golden'][f'remedy_{option}'])) < 1e-10
  assert jnp.zeros(1).dtype == default_dtype  # x64 did not leak out of the context


def test_overlap_remedies_shrink_but_do_not_close_the_gap():
  """Partial overlap: both remedies beat FT on every seed, 'retain' beats 'forget'; neither is w_g.

  'retain' is closer than 'forget' on average at every overlap, and on every seed once
  d_lap / d >= 1/2 (at small overlap both gaps are small and single seeds can swap: in 200 seeds
  at d_lap / d = 1/12, 'retain' was closer on 75% of them).
  """
  with jax.enable_x64(True):
    for d_lap in (30, 60, 90):
      ends, losses = _endpoints_and_losses(_tasks(d_lap, seed=3))
      gap = {k: np.asarray(v) for k, v in losses['gap_to_golden'].items()}
      assert np.all(gap['remedy_retain'] < gap['ft']), d_lap
      assert np.all(gap['remedy_forget'] < gap['ft']), d_lap
      assert gap['remedy_retain'].mean() < gap['remedy_forget'].mean(), d_lap
      if d_lap >= _D // 2:
        assert np.all(gap['remedy_retain'] < gap['remedy_forget']), d_lap
      for option in theory.REMEDY_OPTIONS:
        distance = jnp.linalg.norm(ends[f'remedy_{option}'] - ends['golden'], axis=1)
        assert float(jnp.min(distance)) > 1e-2, (d_lap, option)
      # FT forgets nothing, so its gap is golden's whole unlearning loss.
      np.testing.assert_allclose(gap['ft'], losses['unlearning_loss']['golden'], rtol=1e-9)


def test_full_overlap_forget_option_is_void_and_retain_option_retrains():
  tasks = _tasks(_D, seed=4)
  assert bool(jnp.all(theory.remedy_keep_mask(tasks, 'forget')))
  assert not bool(jnp.any(theory.remedy_keep_mask(tasks, 'retain')))
  ends, _ = _endpoints_and_losses(tasks)
  np.testing.assert_array_equal(ends['remedy_forget'], ends['ft'])
  np.testing.assert_array_equal(ends['remedy_retain'], ends['golden'])


def test_forget_option_is_also_the_remaining_support_reading():
  # Every coordinate belongs to D_r or D_f, so resetting forget-only features keeps exactly the
  # coordinates D_r uses: the brief's coordinate-subspace "retain" reading is this same option.
  tasks = _tasks(40, seed=5)
  np.testing.assert_array_equal(theory.remedy_keep_mask(tasks, 'forget'), tasks.r_support)
  np.testing.assert_array_equal(
    theory.remedy_keep_mask(tasks, 'retain'), tasks.r_support & ~tasks.f_support
  )
  assert int(jnp.sum(tasks.r_support[0] & ~tasks.f_support[0])) == 40  # (120 - 40) / 2


@pytest.mark.parametrize('x64,tolerance', [(False, 1e-4), (True, 1e-9)])
def test_gradient_descent_converges_to_closed_forms(x64, tolerance):
  """GD end points match the closed forms to `tolerance` (max abs over weights of size ~0.1)."""
  with jax.enable_x64(x64):
    tasks = _tasks(30, seed=6)
    ends, losses = _endpoints_and_losses(tasks, 0.5)
    w_o = ends['pretrained']
    lr = _learning_rates(tasks, 0.0)
    starts = {
      'ft': w_o,
      'golden': jnp.zeros_like(w_o),
      'remedy_forget': _remedy_starts(tasks, w_o, 'forget'),
      'remedy_retain': _remedy_starts(tasks, w_o, 'retain'),
    }
    for name, start in starts.items():
      run = theory.simulate(tasks, start, lr, 0.0, steps=3000)
      np.testing.assert_allclose(run.w_final, ends[name], atol=tolerance, err_msg=name)
      assert run.remaining_loss.shape == (_SEEDS, 3001)
      np.testing.assert_allclose(
        run.remaining_loss[:, -1], losses['remaining_loss'][name], atol=tolerance
      )
      np.testing.assert_allclose(
        run.unlearning_loss[:, -1], losses['unlearning_loss'][name], atol=tolerance
      )
    lr_reg = _learning_rates(tasks, 0.5)
    run = theory.simulate(tasks, w_o, lr_reg, 0.5, steps=3000)
    np.testing.assert_allclose(run.w_final, ends['reg_ft'], atol=tolerance)


@pytest.mark.parametrize('x64', [False, True])
def test_solvers_rank_deficient_and_large(x64):
  """Duplicate rows: min-norm solution and projector match numpy float64; d = 2000 is fast."""
  rtol = 1e-10 if x64 else 2e-4
  with jax.enable_x64(x64):
    dtype = jnp.float64 if x64 else jnp.float32
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 2000))
    b = rng.normal(size=200)
    x = np.concatenate([a, a[:50]])  # 50 duplicated rows, same targets: rank 200 of 250 rows
    y = np.concatenate([b, b[:50]])
    start = time.perf_counter()
    w = jax.jit(theory.min_norm_lstsq)(jnp.asarray(x, dtype), jnp.asarray(y, dtype))
    w.block_until_ready()
    assert time.perf_counter() - start < 5.0
    expected = np.linalg.pinv(a) @ b
    np.testing.assert_allclose(w, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    v = rng.normal(size=2000)
    projected = theory.project_row_space(jnp.asarray(x, dtype), jnp.asarray(v, dtype))
    expected = a.T @ np.linalg.solve(a @ a.T, a @ v)
    np.testing.assert_allclose(projected, expected, rtol=rtol, atol=rtol * np.abs(expected).max())

    # Inconsistent duplicates: rows (e0 + e1) with targets 1 and 3, row e2 with target 5. The
    # least-squares fit is the average 2 on e0 + e1, split evenly: w = (1, 1, 5, 0, ...).
    x_small = np.zeros((3, 2000))
    x_small[0, :2] = x_small[1, :2] = 1.0
    x_small[2, 2] = 1.0
    w = theory.min_norm_lstsq(jnp.asarray(x_small, dtype), jnp.asarray([1.0, 3.0, 5.0], dtype))
    expected = np.zeros(2000)
    expected[:3] = (1.0, 1.0, 5.0)
    np.testing.assert_allclose(w, expected, atol=10 * rtol)

    spec = theory.TaskSpec(d=2000, n_r=200, n_f=50, d_lap=500)
    task = theory.make_task(jax.random.key(7), spec)
    start = time.perf_counter()
    ends = jax.jit(theory.closed_form_endpoints)(task)
    jax.block_until_ready(ends)
    assert time.perf_counter() - start < 10.0
    assert float(theory.remaining_loss(ends['ft'], task)) < rtol
    assert float(theory.unlearning_loss(ends['golden'], task)) > 0.1


def test_regularized_finetune_closed_forms():
  with jax.enable_x64(True):
    # Over-parameterised: both terms reach zero, the limit is the same for every alpha and its
    # unlearning loss is (1/n_f) ||y_f||^2.
    tasks = _tasks(40, seed=8)
    ends_small, _ = _endpoints_and_losses(tasks, 0.1)
    ends_one, losses = _endpoints_and_losses(tasks, 1.0)
    np.testing.assert_allclose(ends_small['reg_ft'], ends_one['reg_ft'], atol=1e-10)
    assert float(jnp.max(losses['remaining_loss']['reg_ft'])) < 1e-20
    np.testing.assert_allclose(
      losses['unlearning_loss']['reg_ft'], jnp.mean(jnp.square(tasks.y_f), axis=1), rtol=1e-10
    )

    # Conflict: the forget example repeats the remaining one. J = (w0 - 2)^2 + alpha w0^2, so
    # w0 = 2 / (1 + alpha); untouched coordinates keep their start values (minimum change).
    e0 = jnp.array([[1.0, 0.0, 0.0]])
    conflict = theory.LinRegTask(
      e0,
      jnp.array([2.0]),
      e0,
      jnp.array([5.0]),
      jnp.zeros(3),
      jnp.zeros(3),
      jnp.ones(3, bool),
      jnp.ones(3, bool),
    )
    w = theory.regularized_finetune(conflict, jnp.array([0.0, 7.0, -1.0]), 0.25)
    np.testing.assert_allclose(w, [1.6, 7.0, -1.0], atol=1e-12)
  for bad in (0.0, 1.5, -0.2):
    with pytest.raises(ValueError, match='alpha'):
      theory.regularized_finetune(conflict, jnp.zeros(3), bad)


def test_invalid_arguments_raise_named_errors():
  with pytest.raises(ValueError, match='n_r \\+ n_f'):
    theory.TaskSpec(d=10, n_r=6, n_f=5)
  with pytest.raises(ValueError, match='n_r must be < d_r'):
    theory.TaskSpec(d=100, n_r=60, n_f=10)
  with pytest.raises(ValueError, match='d_lap'):
    theory.TaskSpec(d=100, n_r=10, n_f=10, d_lap=101)
  with pytest.raises(ValueError, match='num_seeds'):
    theory.make_tasks(jax.random.key(0), theory.TaskSpec(d=50, n_r=5, n_f=5), 0)
  task = jax.tree.map(lambda a: a[0], _tasks(0, seed=0))
  with pytest.raises(ValueError, match='option'):
    theory.remedy_keep_mask(task, 'both')
  with pytest.raises(ValueError, match='steps'):
    theory.gradient_descent(task, jnp.zeros(_D), 0.1, steps=0)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = {
  'd': 60,
  'n_r': 12,
  'n_f': 6,
  'seeds': 2,
  'overlap_points': 3,
  'curve_steps': 40,
  'alphas': (0.5, 1.0),
  'alpha_budgets': (5, 10),
}
OUTPUTS = ['loss_curves.png', 'overlap_sweep.png', 'alpha_sweep.png', 'results.json']


def _binary(*flags):
  return subprocess.run(
    [sys.executable, '-m', 'experiments.linreg_theory', *flags],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _flag(name, value):
  return f'--config.{name}={",".join(map(str, value)) if isinstance(value, tuple) else value}'


def test_binary_writes_figures_json_and_table(tmp_path):
  result = _binary(_flag('workdir', tmp_path), *(_flag(k, v) for k, v in _TINY.items()))
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[-1].startswith(
    f'Wrote {", ".join(str(tmp_path / name) for name in OUTPUTS)} in '
  )
  assert sorted(os.listdir(tmp_path)) == sorted(OUTPUTS)  # no temporary file left
  for name in OUTPUTS[:3]:
    with open(tmp_path / name, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert results['config'] == {
    **json.loads(json.dumps(dataclasses.asdict(theory.TheoryConfig()))),
    **json.loads(json.dumps(_TINY)),
    'workdir': str(tmp_path),
  }
  for scenario in ('distinct', 'overlapping'):
    unlearning = results['endpoints'][scenario]['unlearning_loss']
    assert unlearning['ft']['max'][0] < 1e-6
    assert unlearning['golden']['min'][0] > 0.1
    curves = results['loss_curves'][scenario]['unlearning_loss']
    assert len(curves['ft']['mean']) == 41 and max(curves['ft']['max']) < 1e-6
    sweep = results['alpha_sweep'][scenario]
    assert sweep['alpha'] == [0.5, 1.0]
    assert list(sweep['unlearning_loss']) == ['after_5_steps', 'after_10_steps', 'limit']
  assert results['loss_curves']['overlapping']['d_lap'] == 30
  sweep = results['overlap_sweep']
  assert sweep['overlap_ratio'] == [0.0, 0.5, 1.0] and sweep['d_lap'] == [0, 30, 60]
  assert max(sweep['unlearning_loss']['ft']['max']) < 1e-6
  assert min(sweep['unlearning_loss']['golden']['min']) > 0.1
  # Full overlap: no forget-only feature to reset, so the 'forget' remedy is plain FT.
  assert sweep['gap_to_golden']['remedy_forget']['mean'][-1] == pytest.approx(
    sweep['gap_to_golden']['ft']['mean'][-1]
  )
  # The printed table is format_table of what was written.
  assert theory.format_table(results) in result.stdout
  assert 'distinct features (d_lap/d = 0.00), mean over 2 seeds' in result.stdout
  rows = result.stdout.split('gap to golden against overlap (mean over seeds)\n')[1]
  assert [row.split()[0] for row in rows.splitlines()[1:4]] == ['0.00', '0.50', '1.00']


def test_defaults_but_workdir_are_a_run():
  config = to_config_dict(theory.TheoryConfig())  # the binary's config file
  assert from_config_dict(
    theory.TheoryConfig, {**config, 'workdir': 'w'}, '--config'
  ) == theory.TheoryConfig(workdir='w')
  # The binary prints this line and exits with 2 (jaxunlearn.cli).
  with pytest.raises(ConfigError, match=r"^--config.workdir='': must name a directory.$"):
    from_config_dict(theory.TheoryConfig, config, '--config')


BAD_VALUES = [
  ({'n_r': 30}, "--config.n_r=30: must be < round(r_only_fraction * d) = 30 (D_r's features"),
  ({'n_f': 31}, "--config.n_f=31: must be < d - round(r_only_fraction * d) = 30 (D_f's"),
  ({'d': 2}, '--config.d=2: must be an integer >= 3.'),
  ({'seeds': 0}, '--config.seeds=0: must be an integer >= 1.'),
  ({'r_only_fraction': 1.0}, '--config.r_only_fraction=1.0: must be a number in (0, 1).'),
  ({'overlap_ratio': 1.5}, '--config.overlap_ratio=1.5: must be a number in [0, 1].'),
  ({'overlap_points': 1}, '--config.overlap_points=1: must be an integer >= 2.'),
  ({'noise_std': -0.1}, '--config.noise_std=-0.1: must be a number >= 0.'),
  ({'alphas': (0.0, 1.0)}, '--config.alphas=(0.0, 1.0): must be a tuple of numbers in (0, 1].'),
  ({'alphas': ('a',)}, "--config.alphas=('a',): must be a tuple of numbers in (0, 1]."),
  ({'alphas': (1.0, 0.5)}, '--config.alphas=(1.0, 0.5): must be one or more values in increasing'),
  ({'alphas': ()}, '--config.alphas=(): must be one or more values in increasing order.'),
  ({'alpha_budgets': (0, 5)}, '--config.alpha_budgets=(0, 5): must be a tuple of integers >= 1.'),
  ({'alpha_budgets': (5, 5)}, '--config.alpha_budgets=(5, 5): must be one or more values in'),
  ({'workdir': ' '}, "--config.workdir=' ': must name a directory."),
]


@pytest.mark.parametrize('overrides, message', BAD_VALUES, ids=[str(o) for o, _ in BAD_VALUES])
def test_bad_value_is_one_config_error_line(tmp_path, overrides, message):
  values = {'workdir': str(tmp_path), **_TINY, **overrides}
  for build in (
    lambda: theory.compute(theory.TheoryConfig(**values)),
    lambda: from_config_dict(theory.TheoryConfig, values, '--config'),
  ):
    with pytest.raises(ConfigError) as error:
      build()
    assert str(error.value).startswith(message), str(error.value)
    assert '\n' not in str(error.value)
  assert os.listdir(tmp_path) == []


def test_config_from_flag_values():
  config = from_config_dict(
    theory.TheoryConfig, {'workdir': 'w', 'd': 300, 'alphas': [0.5, 1], 'x64': True}, '--config'
  )
  assert config.alphas == (0.5, 1.0) and isinstance(config.alphas[1], float)
  assert config.d == 300 and config.x64 is True
  assert config.n_f == 40 and config.seeds == 5  # the others at their defaults
