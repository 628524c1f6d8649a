"""The sweeps behind the theory's figures: every scenario, seed, overlap ratio and alpha.

`compute(TheoryConfig(...))` samples the tasks, evaluates the closed forms and runs full-batch
gradient descent, and returns every plotted number as plain lists (mean, min and max over seeds):

  loss_curves    remaining and unlearning loss along gradient-descent fine-tuning from each start,
                 for distinct and overlapping features;
  endpoints      the closed-form end-point losses of every method in both scenarios;
  alpha_sweep    regularised FT after a few step budgets and at its limit, against alpha;
  overlap_sweep  end-point unlearning loss and gap to golden against the overlap ratio d_lap / d.

`format_table` renders the end points as text; `jaxunlearn.theory.plots` draws the figures.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from jaxunlearn.config import Config, flag, integer, integers, number, numbers, text, validate
from jaxunlearn.theory import data, dynamics, linreg

CURVE_METHODS = ('pretrained', 'ft', 'golden', 'remedy_forget', 'remedy_retain')
SWEEP_METHODS = ('ft', 'golden', 'remedy_forget', 'remedy_retain', 'reg_ft')
TABLE_METHODS = ('pretrained', 'ft', 'golden', 'remedy_forget', 'remedy_retain', 'reg_ft')


def _increasing(values: tuple) -> bool:
  return bool(values) and all(a < b for a, b in zip(values, values[1:]))


@dataclasses.dataclass(frozen=True)
class TheoryConfig(Config):
  """The sizes and grids of the sweeps (the flags of `experiments/linreg_theory.py`)."""

  workdir: str = text('', doc='where the figures and results.json go')
  seeds: int = integer(5, ge=1, doc='sampled tasks per setting')
  seed: int = integer(0, ge=0, doc='base PRNG seed')
  d: int = integer(400, ge=3, doc='number of coordinates (features)')
  n_r: int = integer(100, ge=1, doc='number of remaining examples')
  n_f: int = integer(40, ge=1, doc='number of forget examples')
  r_only_fraction: float = number(
    0.5, gt=0, lt=1, doc='share of the unshared coordinates that belong to D_r only'
  )
  overlap_ratio: float = number(
    0.5, ge=0, le=1, doc='d_lap / d of the overlapping scenario (loss curves and alpha sweep)'
  )
  overlap_points: int = integer(11, ge=2, doc='overlap ratios swept in [0, 1]')
  noise_std: float = number(0.0, ge=0, doc='label-noise standard deviation')
  curve_steps: int = integer(400, ge=1, doc='gradient steps drawn in the loss curves')
  alphas: tuple = numbers(
    (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0), gt=0, le=1, doc='regularisation strengths'
  )
  alpha_budgets: tuple = integers(
    (10, 30, 100), ge=1, doc='step budgets at which regularised FT is read off'
  )
  x64: bool = flag(False, doc='compute in float64')

  @property
  def d_r_at_zero_overlap(self) -> int:
    """D_r's features at zero overlap, where each data set has the fewest."""
    return int(round(self.r_only_fraction * self.d))

  def constraints(self):
    d_r = self.d_r_at_zero_overlap
    return (
      ('workdir', bool(self.workdir.strip()), 'must name a directory'),
      (
        'n_r',
        self.n_r < d_r,
        f"must be < round(r_only_fraction * d) = {d_r} (D_r's features at zero overlap)",
      ),
      (
        'n_f',
        self.n_f < self.d - d_r,
        f"must be < d - round(r_only_fraction * d) = {self.d - d_r} (D_f's features at zero "
        'overlap)',
      ),
      ('alphas', _increasing(self.alphas), 'must be one or more values in increasing order'),
      (
        'alpha_budgets',
        _increasing(self.alpha_budgets),
        'must be one or more values in increasing order',
      ),
    )


def task_spec(config: TheoryConfig, overlap_ratio: float) -> data.TaskSpec:
  """The task sizes of `config` with d_lap = round(overlap_ratio * d) shared features."""
  return data.TaskSpec(
    d=config.d,
    n_r=config.n_r,
    n_f=config.n_f,
    d_lap=int(round(overlap_ratio * config.d)),
    r_only_fraction=config.r_only_fraction,
    noise_std=config.noise_std,
  )


def seed_stats(values) -> dict:
  """Mean, min and max over the leading seed axis, as lists of Python floats."""
  values = np.asarray(values, np.float64)
  return {
    k: np.atleast_1d(f(values, axis=0)).tolist()
    for k, f in (('mean', np.mean), ('min', np.min), ('max', np.max))
  }


_endpoints = jax.jit(jax.vmap(linreg.closed_form_endpoints))
_endpoint_losses = jax.jit(jax.vmap(linreg.endpoint_losses))
_learning_rates = jax.jit(jax.vmap(dynamics.default_learning_rate, in_axes=(0, None)))
_remedy_start = jax.jit(jax.vmap(linreg.remedy_start, in_axes=(0, 0, None)), static_argnums=2)
_regularized = jax.jit(jax.vmap(linreg.regularized_finetune, in_axes=(0, 0, None)))
_unlearning = jax.jit(jax.vmap(linreg.unlearning_loss))
_remaining = jax.jit(jax.vmap(linreg.remaining_loss))


def loss_curves(tasks: data.LinRegTask, steps: int) -> dict:
  """GD fine-tuning curves of every start, plus how far each GD end is from its closed form.

  Args:
    tasks: tasks with a leading seed axis.
    steps: gradient steps of each run.

  Returns:
    {'steps', 'remaining_loss': {method: stats}, 'unlearning_loss': ...,
    'max_abs_gd_minus_closed_form': {method: float}}, stats as `seed_stats` per step.
  """
  ends = _endpoints(tasks)
  w_o = ends['pretrained']
  starts = {  # keyed by the closed form each run converges to
    'ft': w_o,
    'golden': jnp.zeros_like(w_o),
    'remedy_forget': _remedy_start(tasks, w_o, 'forget'),
    'remedy_retain': _remedy_start(tasks, w_o, 'retain'),
  }
  learning_rates = _learning_rates(tasks, 0.0)
  curves = {
    'steps': list(range(steps + 1)),
    'remaining_loss': {},
    'unlearning_loss': {},
    'max_abs_gd_minus_closed_form': {},
  }
  curves['remaining_loss']['pretrained'] = seed_stats(
    np.repeat(np.asarray(_remaining(w_o, tasks))[:, None], steps + 1, axis=1)
  )
  curves['unlearning_loss']['pretrained'] = seed_stats(
    np.repeat(np.asarray(_unlearning(w_o, tasks))[:, None], steps + 1, axis=1)
  )
  for name, start in starts.items():
    run = dynamics.simulate(tasks, start, learning_rates, 0.0, steps=steps)
    curves['remaining_loss'][name] = seed_stats(run.remaining_loss)
    curves['unlearning_loss'][name] = seed_stats(run.unlearning_loss)
    curves['max_abs_gd_minus_closed_form'][name] = float(jnp.max(jnp.abs(run.w_final - ends[name])))
  return curves


def endpoint_table(tasks: data.LinRegTask) -> dict:
  """Closed-form end-point losses of every method: {metric: {method: `seed_stats`}}."""
  losses = _endpoint_losses(tasks, _endpoints(tasks))
  return {
    metric: {name: seed_stats(values[name]) for name in TABLE_METHODS}
    for metric, values in losses.items()
  }


def overlap_sweep(config: TheoryConfig, key: jax.Array) -> dict:
  """Unlearning loss and gap to golden against d_lap / d, the same key for every ratio.

  Returns:
    {'overlap_ratio', 'd_lap', 'unlearning_loss': {method: stats}, 'gap_to_golden': ...}, stats as
    `seed_stats` per ratio.
  """
  per_ratio = []
  d_laps = []
  for ratio in np.linspace(0.0, 1.0, config.overlap_points):
    spec = task_spec(config, ratio)
    d_laps.append(spec.d_lap)
    tasks = data.make_tasks(key, spec, config.seeds)
    per_ratio.append(_endpoint_losses(tasks, _endpoints(tasks)))
  out = {'overlap_ratio': [d_lap / config.d for d_lap in d_laps], 'd_lap': d_laps}
  for metric in ('unlearning_loss', 'gap_to_golden'):
    out[metric] = {}
    for name in SWEEP_METHODS:
      seeds_by_ratio = np.stack([np.asarray(r[metric][name]) for r in per_ratio], axis=1)
      out[metric][name] = seed_stats(seeds_by_ratio)
  return out


def alpha_sweep(tasks: data.LinRegTask, alphas, budgets) -> dict:
  """Regularised FT from w_o after each step budget and at its limit, against alpha.

  Every alpha uses the same step size, 1 / lambda_max of alpha = 1's Hessian (stable for all).

  Args:
    tasks: tasks with a leading seed axis.
    alphas: regularisation strengths in (0, 1].
    budgets: step budgets, increasing.

  Returns:
    {'alpha', 'budgets', 'golden_unlearning_loss', 'ft_unlearning_loss', 'unlearning_loss':
    {'after_{b}_steps' or 'limit': stats}, 'remaining_loss': ...}, stats as `seed_stats` per alpha.
  """
  ends = _endpoints(tasks)
  w_o = ends['pretrained']
  learning_rates = _learning_rates(tasks, 1.0)
  steps = max(budgets)
  out = {
    'alpha': list(alphas),
    'budgets': list(budgets),
    'golden_unlearning_loss': seed_stats(_unlearning(ends['golden'], tasks)),
    'ft_unlearning_loss': seed_stats(_unlearning(ends['ft'], tasks)),
    'unlearning_loss': {},
    'remaining_loss': {},
  }
  budget_unlearning = {b: [] for b in budgets}
  budget_remaining = {b: [] for b in budgets}
  limit_unlearning, limit_remaining = [], []
  for alpha in alphas:
    run = dynamics.simulate(tasks, w_o, learning_rates, alpha, steps=steps)
    for b in budgets:
      budget_unlearning[b].append(np.asarray(run.unlearning_loss[:, b]))
      budget_remaining[b].append(np.asarray(run.remaining_loss[:, b]))
    w_limit = _regularized(tasks, w_o, alpha)
    limit_unlearning.append(np.asarray(_unlearning(w_limit, tasks)))
    limit_remaining.append(np.asarray(_remaining(w_limit, tasks)))
  for b in budgets:
    out['unlearning_loss'][f'after_{b}_steps'] = seed_stats(np.stack(budget_unlearning[b], axis=1))
    out['remaining_loss'][f'after_{b}_steps'] = seed_stats(np.stack(budget_remaining[b], axis=1))
  out['unlearning_loss']['limit'] = seed_stats(np.stack(limit_unlearning, axis=1))
  out['remaining_loss']['limit'] = seed_stats(np.stack(limit_remaining, axis=1))
  return out


def _compute(config: TheoryConfig) -> dict:
  key = jax.random.key(config.seed)
  scenarios = {'distinct': 0.0, 'overlapping': config.overlap_ratio}
  results = {
    'config': dataclasses.asdict(config),
    'loss_curves': {},
    'endpoints': {},
    'alpha_sweep': {},
  }
  for scenario, ratio in scenarios.items():
    spec = task_spec(config, ratio)
    tasks = data.make_tasks(key, spec, config.seeds)
    results['loss_curves'][scenario] = loss_curves(tasks, config.curve_steps)
    results['loss_curves'][scenario]['d_lap'] = spec.d_lap
    results['endpoints'][scenario] = endpoint_table(tasks)
    results['alpha_sweep'][scenario] = alpha_sweep(tasks, config.alphas, config.alpha_budgets)
  results['overlap_sweep'] = overlap_sweep(config, key)
  return results


def compute(config: TheoryConfig) -> dict:
  """Every number of the figures and the table, at the config's precision (float64 if x64).

  The distinct (d_lap = 0) and overlapping (`overlap_ratio`) scenarios sample their tasks from
  the same key, as does every ratio of the overlap sweep.

  Args:
    config: the sizes and grids; validated first (`ConfigError` names the bad field).

  Returns:
    {'config': the config as a dict, 'loss_curves': {scenario: `loss_curves` and its 'd_lap'},
    'endpoints': {scenario: `endpoint_table`}, 'alpha_sweep': {scenario: `alpha_sweep`},
    'overlap_sweep': `overlap_sweep`}: plain lists and floats, ready for JSON.
  """
  validate(config, '--config')
  # Every matrix here is small: multi-threaded BLAS/LAPACK only adds synchronisation.
  with jax.enable_x64(config.x64), threadpoolctl.threadpool_limits(1, user_api='blas'):
    return _compute(config)


def format_table(results: dict) -> str:
  """End-point losses (closed forms, mean over seeds) per scenario, and gaps against overlap."""
  config = results['config']
  lines = ['reg_ft = regularised FT (alpha = 1) at its limit; every row is a closed form.']
  for scenario, table in results['endpoints'].items():
    d_lap = results['loss_curves'][scenario]['d_lap']
    lines.append(
      f'{scenario} features (d_lap/d = {d_lap / config["d"]:.2f}), '
      f'mean over {config["seeds"]} seeds'
    )
    lines.append(f'  {"method":<15}{"remaining":>12}{"unlearning":>12}{"gap to golden":>15}')
    for name in TABLE_METHODS:
      lines.append(
        f'  {name:<15}{table["remaining_loss"][name]["mean"][0]:>12.3e}'
        f'{table["unlearning_loss"][name]["mean"][0]:>12.4f}'
        f'{table["gap_to_golden"][name]["mean"][0]:>15.4f}'
      )
    deviations = results['loss_curves'][scenario]['max_abs_gd_minus_closed_form']
    lines.append(
      '  GD end vs closed form, max |dw|: '
      + ', '.join(f'{k} {v:.1e}' for k, v in deviations.items())
    )
  sweep = results['overlap_sweep']
  lines.append('gap to golden against overlap (mean over seeds)')
  lines.append(f'  {"d_lap/d":<9}' + ''.join(f'{name:>15}' for name in SWEEP_METHODS))
  for i, ratio in enumerate(sweep['overlap_ratio']):
    lines.append(
      f'  {ratio:<9.2f}'
      + ''.join(f'{sweep["gap_to_golden"][name]["mean"][i]:>15.4f}' for name in SWEEP_METHODS)
    )
  return '\n'.join(lines)
