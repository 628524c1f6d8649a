r"""Figures of the linear-regression theory of "Why fine-tuning struggles with forgetting" (v1).

  python -m experiments.linreg_theory --workdir=/tmp/linreg_theory

Writes into --workdir (each file atomically):
  loss_curves.png    remaining and unlearning loss along gradient-descent fine-tuning, for distinct
                     and overlapping features (pretrained, FT, golden, both remedies);
  overlap_sweep.png  unlearning loss and gap to golden against the overlap ratio d_lap / d;
  alpha_sweep.png    regularised FT: unlearning and remaining loss against alpha in (0, 1];
  results.json       every plotted number (mean, min and max over seeds) and the run's flags;
and prints a table of the end-point losses. Bands in the figures span min to max over seeds.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import threadpoolctl
from absl import app, flags

from jaxunlearn import files, theory

matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

# This binary's flags live in their own FlagValues so that importing it (e.g. from tests) never
# collides with flags of other experiment modules defined on the global absl FLAGS.
_FLAGS = flags.FlagValues()
flags.DEFINE_string(
  'workdir', None, 'Output directory for figures and results.json.', flag_values=_FLAGS
)
flags.DEFINE_integer('seeds', 5, 'Number of sampled tasks per setting.', flag_values=_FLAGS)
flags.DEFINE_integer('seed', 0, 'Base PRNG seed.', flag_values=_FLAGS)
flags.DEFINE_integer('d', 400, 'Number of coordinates (features).', flag_values=_FLAGS)
flags.DEFINE_integer('n_r', 100, 'Number of remaining examples.', flag_values=_FLAGS)
flags.DEFINE_integer('n_f', 40, 'Number of forget examples.', flag_values=_FLAGS)
flags.DEFINE_float(
  'r_only_fraction',
  0.5,
  'Share of the unshared coordinates that belong to D_r only.',
  flag_values=_FLAGS,
)
flags.DEFINE_float(
  'overlap_ratio',
  0.5,
  'd_lap / d of the overlapping scenario in the loss-curve and alpha figures.',
  flag_values=_FLAGS,
)
flags.DEFINE_integer(
  'overlap_points', 11, 'Number of overlap ratios in [0, 1] swept.', flag_values=_FLAGS
)
flags.DEFINE_float('noise_std', 0.0, 'Label-noise standard deviation.', flag_values=_FLAGS)
flags.DEFINE_integer(
  'curve_steps', 400, 'Gradient steps drawn in the loss-curve figure.', flag_values=_FLAGS
)
flags.DEFINE_list(
  'alphas',
  ['0.05', '0.1', '0.2', '0.3', '0.5', '0.7', '1.0'],
  'Regularisation strengths in (0, 1].',
  flag_values=_FLAGS,
)
flags.DEFINE_list(
  'alpha_budgets',
  ['10', '30', '100'],
  'Step budgets at which regularised FT is read off in the alpha figure.',
  flag_values=_FLAGS,
)
flags.DEFINE_bool('x64', False, 'Compute in float64.', flag_values=_FLAGS)
flags.mark_flag_as_required('workdir', flag_values=_FLAGS)

CURVE_METHODS = ('pretrained', 'ft', 'golden', 'remedy_forget', 'remedy_retain')
SWEEP_METHODS = ('ft', 'golden', 'remedy_forget', 'remedy_retain', 'reg_ft')
TABLE_METHODS = ('pretrained', 'ft', 'golden', 'remedy_forget', 'remedy_retain', 'reg_ft')
LABELS = {
  'pretrained': 'Pretrained $w_o$',
  'ft': 'FT from $w_o$',
  'golden': 'Golden $w_g$ (retrain on $D_r$)',
  'remedy_forget': 'Remedy "forget": reset forget-only features, FT',
  'remedy_retain': 'Remedy "retain": keep remaining-only features, FT',
  'reg_ft': r'Regularised FT ($\alpha$=1, limit)',
}
STYLES = {
  'pretrained': dict(color='0.6', linestyle='-', linewidth=6, alpha=0.6),
  'ft': dict(color='C0', linestyle='--', linewidth=2),
  'golden': dict(color='black', linestyle='--', linewidth=1.8, zorder=5),
  'remedy_forget': dict(color='C1', linestyle='-', linewidth=1.8),
  'remedy_retain': dict(color='C2', linestyle='-', linewidth=1.8),
  'reg_ft': dict(color='C3', linestyle='-.', linewidth=1.8),
}
LOG_FLOOR = 1e-10  # losses below this are drawn at it on log axes (FT's are ~1e-12 in float32)


def _parse_list(flag: str, values, kind, low, high, low_open):
  """Parses a list flag into sorted distinct numbers in (low, high] (low_open) or [low, high]."""
  try:
    parsed = [kind(v) for v in values]
  except ValueError as e:
    raise ValueError(
      f'--{flag} must be a comma-separated list of {kind.__name__}, got {values!r}.'
    ) from e
  if not parsed:
    raise ValueError(f'--{flag} must not be empty.')
  for v in parsed:
    if (v <= low if low_open else v < low) or v > high:
      bracket = '(' if low_open else '['
      raise ValueError(f'--{flag} values must be in {bracket}{low}, {high}], got {v!r}.')
  return sorted(set(parsed))


def config_from_flags(fv: flags.FlagValues) -> dict:
  """Validates the parsed flags; ValueError messages name the offending flag."""
  for name, low in (
    ('seeds', 1),
    ('d', 3),
    ('n_r', 1),
    ('n_f', 1),
    ('curve_steps', 1),
    ('overlap_points', 2),
  ):
    if fv[name].value < low:
      raise ValueError(f'--{name} must be >= {low}, got {fv[name].value}.')
  if not 0.0 < fv.r_only_fraction < 1.0:
    raise ValueError(f'--r_only_fraction must be in (0, 1), got {fv.r_only_fraction}.')
  if not 0.0 <= fv.overlap_ratio <= 1.0:
    raise ValueError(f'--overlap_ratio must be in [0, 1], got {fv.overlap_ratio}.')
  if fv.noise_std < 0.0:
    raise ValueError(f'--noise_std must be >= 0, got {fv.noise_std}.')
  # Each data set has the fewest features at zero overlap; over-parameterisation must hold there.
  d_r = int(round(fv.r_only_fraction * fv.d))
  if not fv.n_r < d_r:
    raise ValueError(
      f"--n_r must be < round(--r_only_fraction * --d) = {d_r} (D_r's features "
      f'at zero overlap), got --n_r={fv.n_r}.'
    )
  if not fv.n_f < fv.d - d_r:
    raise ValueError(
      f'--n_f must be < --d - round(--r_only_fraction * --d) = {fv.d - d_r} '
      f"(D_f's features at zero overlap), got --n_f={fv.n_f}."
    )
  return dict(
    workdir=fv.workdir,
    seeds=fv.seeds,
    seed=fv.seed,
    d=fv.d,
    n_r=fv.n_r,
    n_f=fv.n_f,
    r_only_fraction=fv.r_only_fraction,
    overlap_ratio=fv.overlap_ratio,
    overlap_points=fv.overlap_points,
    noise_std=fv.noise_std,
    curve_steps=fv.curve_steps,
    alphas=_parse_list('alphas', fv.alphas, float, 0.0, 1.0, low_open=True),
    alpha_budgets=_parse_list('alpha_budgets', fv.alpha_budgets, int, 1, 10**6, low_open=False),
    x64=fv.x64,
  )


def _spec(config: dict, overlap_ratio: float) -> theory.TaskSpec:
  return theory.TaskSpec(
    d=config['d'],
    n_r=config['n_r'],
    n_f=config['n_f'],
    d_lap=int(round(overlap_ratio * config['d'])),
    r_only_fraction=config['r_only_fraction'],
    noise_std=config['noise_std'],
  )


def _stats(values) -> dict:
  """Mean, min and max over the leading seed axis, as lists of Python floats."""
  values = np.asarray(values, np.float64)
  return {
    k: np.atleast_1d(f(values, axis=0)).tolist()
    for k, f in (('mean', np.mean), ('min', np.min), ('max', np.max))
  }


_endpoints = jax.jit(jax.vmap(theory.closed_form_endpoints))
_endpoint_losses = jax.jit(jax.vmap(theory.endpoint_losses))
_learning_rates = jax.jit(jax.vmap(theory.default_learning_rate, in_axes=(0, None)))
_remedy_start = jax.jit(jax.vmap(theory.remedy_start, in_axes=(0, 0, None)), static_argnums=2)
_regularized = jax.jit(jax.vmap(theory.regularized_finetune, in_axes=(0, 0, None)))
_unlearning = jax.jit(jax.vmap(theory.unlearning_loss))
_remaining = jax.jit(jax.vmap(theory.remaining_loss))


def loss_curves(tasks: theory.LinRegTask, steps: int) -> dict:
  """GD fine-tuning curves of every start, plus how far each GD end is from its closed form."""
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
  curves['remaining_loss']['pretrained'] = _stats(
    np.repeat(np.asarray(_remaining(w_o, tasks))[:, None], steps + 1, axis=1)
  )
  curves['unlearning_loss']['pretrained'] = _stats(
    np.repeat(np.asarray(_unlearning(w_o, tasks))[:, None], steps + 1, axis=1)
  )
  for name, start in starts.items():
    run = theory.simulate(tasks, start, learning_rates, 0.0, steps=steps)
    curves['remaining_loss'][name] = _stats(run.remaining_loss)
    curves['unlearning_loss'][name] = _stats(run.unlearning_loss)
    curves['max_abs_gd_minus_closed_form'][name] = float(jnp.max(jnp.abs(run.w_final - ends[name])))
  return curves


def endpoint_table(tasks: theory.LinRegTask) -> dict:
  """Closed-form end-point losses of every method (mean/min/max over seeds)."""
  losses = _endpoint_losses(tasks, _endpoints(tasks))
  return {
    metric: {name: _stats(values[name]) for name in TABLE_METHODS}
    for metric, values in losses.items()
  }


def overlap_sweep(config: dict, key: jax.Array) -> dict:
  """Unlearning loss and gap to golden against d_lap / d, same key for every ratio."""
  ratios = np.linspace(0.0, 1.0, config['overlap_points'])
  per_ratio = []
  d_laps = []
  for ratio in ratios:
    spec = _spec(config, ratio)
    d_laps.append(spec.d_lap)
    tasks = theory.make_tasks(key, spec, config['seeds'])
    per_ratio.append(_endpoint_losses(tasks, _endpoints(tasks)))
  out = {'overlap_ratio': [d_lap / config['d'] for d_lap in d_laps], 'd_lap': d_laps}
  for metric in ('unlearning_loss', 'gap_to_golden'):
    out[metric] = {}
    for name in SWEEP_METHODS:
      seeds_by_ratio = np.stack([np.asarray(r[metric][name]) for r in per_ratio], axis=1)
      out[metric][name] = _stats(seeds_by_ratio)
  return out


def alpha_sweep(tasks: theory.LinRegTask, alphas, budgets) -> dict:
  """Regularised FT from w_o after each step budget and at its limit, against alpha.

  Every alpha uses the same step size, 1 / lambda_max of alpha = 1's Hessian (stable for all).
  """
  ends = _endpoints(tasks)
  w_o = ends['pretrained']
  learning_rates = _learning_rates(tasks, 1.0)
  steps = max(budgets)
  out = {
    'alpha': list(alphas),
    'budgets': list(budgets),
    'golden_unlearning_loss': _stats(_unlearning(ends['golden'], tasks)),
    'ft_unlearning_loss': _stats(_unlearning(ends['ft'], tasks)),
    'unlearning_loss': {},
    'remaining_loss': {},
  }
  budget_unlearning = {b: [] for b in budgets}
  budget_remaining = {b: [] for b in budgets}
  limit_unlearning, limit_remaining = [], []
  for alpha in alphas:
    run = theory.simulate(tasks, w_o, learning_rates, alpha, steps=steps)
    for b in budgets:
      budget_unlearning[b].append(np.asarray(run.unlearning_loss[:, b]))
      budget_remaining[b].append(np.asarray(run.remaining_loss[:, b]))
    w_limit = _regularized(tasks, w_o, alpha)
    limit_unlearning.append(np.asarray(_unlearning(w_limit, tasks)))
    limit_remaining.append(np.asarray(_remaining(w_limit, tasks)))
  for b in budgets:
    out['unlearning_loss'][f'after_{b}_steps'] = _stats(np.stack(budget_unlearning[b], axis=1))
    out['remaining_loss'][f'after_{b}_steps'] = _stats(np.stack(budget_remaining[b], axis=1))
  out['unlearning_loss']['limit'] = _stats(np.stack(limit_unlearning, axis=1))
  out['remaining_loss']['limit'] = _stats(np.stack(limit_remaining, axis=1))
  return out


def run(config: dict) -> dict:
  """Computes every number of the three figures and the table."""
  key = jax.random.key(config['seed'])
  scenarios = {'distinct': 0.0, 'overlapping': config['overlap_ratio']}
  results = {'config': config, 'loss_curves': {}, 'endpoints': {}, 'alpha_sweep': {}}
  for scenario, ratio in scenarios.items():
    spec = _spec(config, ratio)
    tasks = theory.make_tasks(key, spec, config['seeds'])
    results['loss_curves'][scenario] = loss_curves(tasks, config['curve_steps'])
    results['loss_curves'][scenario]['d_lap'] = spec.d_lap
    results['endpoints'][scenario] = endpoint_table(tasks)
    results['alpha_sweep'][scenario] = alpha_sweep(tasks, config['alphas'], config['alpha_budgets'])
  results['overlap_sweep'] = overlap_sweep(config, key)
  return results


def _band(ax, x, stats, floor=None, **style):
  mean, low, high = (np.asarray(stats[k]) for k in ('mean', 'min', 'max'))
  if floor is not None:
    mean, low, high = (np.maximum(v, floor) for v in (mean, low, high))
  (line,) = ax.plot(x, mean, **style)
  ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
  return line


def _scenario_title(config, scenario, d_lap):
  if scenario == 'distinct':
    return 'Distinct features ($d_{lap}$ = 0)'
  return f'Overlapping features ($d_{{lap}}/d$ = {d_lap / config["d"]:.2f})'


def plot_loss_curves(results: dict):
  """Figure 1: remaining and unlearning loss along GD fine-tuning, both scenarios."""
  config = results['config']
  fig, axes = plt.subplots(2, 2, figsize=(13, 9), constrained_layout=True)
  for row, scenario in enumerate(('distinct', 'overlapping')):
    curves = results['loss_curves'][scenario]
    steps = np.asarray(curves['steps'])
    title = _scenario_title(config, scenario, curves['d_lap'])
    for col, metric in enumerate(('remaining_loss', 'unlearning_loss')):
      ax = axes[row, col]
      for name in CURVE_METHODS:
        floor = LOG_FLOOR if metric == 'remaining_loss' else None
        label = LABELS[name] + (' (coincides with pretrained)' if name == 'ft' else '')
        _band(ax, steps, curves[metric][name], floor=floor, label=label, **STYLES[name])
      if metric == 'remaining_loss':
        ax.set_yscale('log')
        ax.set_ylim(LOG_FLOOR / 3, None)
        ax.set_ylabel(r'remaining loss $L(w, D_r)$ (log; < 1e-10 drawn at 1e-10)')
      else:
        ax.set_ylim(bottom=-0.03)
        ax.set_ylabel(r'unlearning loss $L(w, D_f)$ (higher = more forgotten)')
      if scenario == 'distinct' and metric == 'unlearning_loss':
        ax.text(
          0.5,
          0.45,
          'both remedies coincide with golden (dashed)',
          ha='center',
          transform=ax.transAxes,
          fontsize=10,
        )
      ax.set_xlabel('gradient-descent fine-tuning step on $D_r$')
      ax.set_title(f'{title}: {metric.replace("_", " ")}')
      ax.grid(alpha=0.3)
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside lower center', ncol=3, fontsize=10)
  fig.suptitle(
    f'Fine-tuning dynamics (d={config["d"]}, $n_r$={config["n_r"]}, '
    f'$n_f$={config["n_f"]}, {config["seeds"]} seeds: mean, band = min..max). '
    'FT from $w_o$ never leaves $w_o$: it forgets nothing.',
    fontsize=12,
  )
  return fig


def plot_overlap_sweep(results: dict):
  """Figure 2: end-point unlearning loss and gap to golden against d_lap / d."""
  config = results['config']
  sweep = results['overlap_sweep']
  x = np.asarray(sweep['overlap_ratio'])
  fig, axes = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
  for ax, metric, ylabel in (
    (axes[0], 'unlearning_loss', r'unlearning loss $L(w, D_f)$'),
    (axes[1], 'gap_to_golden', r'gap to golden $|L(w, D_f) - L(w_g, D_f)|$'),
  ):
    for name in SWEEP_METHODS:
      _band(
        ax, x, sweep[metric][name], label=LABELS[name], marker='o', markersize=4, **STYLES[name]
      )
    ax.set_xlabel('overlap ratio $d_{lap} / d$')
    ax.set_ylabel(ylabel)
    ax.set_title(ylabel.split(' $')[0].capitalize() + ' against feature overlap')
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='outside lower center', ncol=3, fontsize=10)
  fig.suptitle(
    f'End points against overlap (d={config["d"]}, $n_r$={config["n_r"]}, '
    f'$n_f$={config["n_f"]}, {config["seeds"]} seeds: mean, band = min..max)',
    fontsize=12,
  )
  return fig


def plot_alpha_sweep(results: dict):
  """Figure 3: regularised FT's unlearning and remaining loss against alpha, both scenarios."""
  config = results['config']
  fig, axes = plt.subplots(2, 2, figsize=(13, 9), constrained_layout=True)
  for row, scenario in enumerate(('distinct', 'overlapping')):
    sweep = results['alpha_sweep'][scenario]
    alphas = np.asarray(sweep['alpha'])
    title = _scenario_title(config, scenario, results['loss_curves'][scenario]['d_lap'])
    series = [f'after_{b}_steps' for b in sweep['budgets']] + ['limit']
    colors = plt.cm.viridis(np.linspace(0.15, 0.85, len(sweep['budgets'])))
    for col, metric in enumerate(('unlearning_loss', 'remaining_loss')):
      ax = axes[row, col]
      floor = LOG_FLOOR if metric == 'remaining_loss' else None
      for i, name in enumerate(series):
        if name == 'limit':
          style = dict(
            color='C3', linestyle='--', linewidth=2, label='limit (closed form, any step budget)'
          )
        else:
          style = dict(
            color=colors[i],
            linestyle='-',
            linewidth=1.8,
            label=f'after {sweep["budgets"][i]} GD steps',
          )
        _band(ax, alphas, sweep[metric][name], floor=floor, marker='o', markersize=4, **style)
      if metric == 'unlearning_loss':
        ax.axhline(
          sweep['golden_unlearning_loss']['mean'][0],
          color='black',
          linestyle=':',
          linewidth=1.5,
          label='golden $w_g$',
        )
        ax.axhline(
          sweep['ft_unlearning_loss']['mean'][0],
          color='C0',
          linestyle=':',
          linewidth=2,
          label=r'plain FT ($\alpha$ = 0)',
        )
        ax.set_ylabel(r'unlearning loss $L(w, D_f)$')
        ax.set_ylim(bottom=-0.03)
      else:
        ax.set_yscale('log')
        ax.set_ylim(LOG_FLOOR / 3, 1.0)
        ax.set_ylabel(r'remaining loss $L(w, D_r)$ (log; < 1e-10 drawn at 1e-10)')
        if max(max(sweep[metric][name]['max']) for name in series) <= LOG_FLOOR:
          ax.text(
            0.5,
            0.5,
            'remaining loss stays < 1e-10 for every budget:\nthe forget term cannot disturb $D_r$',
            transform=ax.transAxes,
            ha='center',
            va='center',
            fontsize=10,
          )
      ax.set_xscale('log')
      ax.set_xlabel(r'regularisation strength $\alpha$')
      ax.set_title(f'{title}: {metric.replace("_", " ")}')
      ax.grid(alpha=0.3, which='both')
      ax.legend(fontsize=8, framealpha=0.9)
  fig.suptitle(
    r'Regularised FT $L(w, D_r) + \alpha\,(1/n_f)\|X_f w - 0\|^2$ from $w_o$: '
    r'$\alpha$ sets the speed, not the limit (same step size for every $\alpha$)',
    fontsize=12,
  )
  return fig


def write_outputs(results: dict, workdir: str) -> list[str]:
  """Writes the three PNGs and results.json into workdir; returns their paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = []
  for name, plot in (
    ('loss_curves.png', plot_loss_curves),
    ('overlap_sweep.png', plot_overlap_sweep),
    ('alpha_sweep.png', plot_alpha_sweep),
  ):
    fig = plot(results)
    path = os.path.join(workdir, name)
    with files.atomic_file(path, 'wb') as f:
      fig.savefig(f, format='png', dpi=110)
    plt.close(fig)
    paths.append(path)
  path = os.path.join(workdir, 'results.json')
  with files.atomic_file(path) as f:
    json.dump(results, f, indent=1)
  paths.append(path)
  return paths


def format_table(results: dict) -> str:
  """End-point losses (closed forms, mean over seeds) per scenario, and gaps against overlap."""
  lines = ['reg_ft = regularised FT (alpha = 1) at its limit; every row is a closed form.']
  for scenario, table in results['endpoints'].items():
    d_lap = results['loss_curves'][scenario]['d_lap']
    lines.append(
      f'{scenario} features (d_lap/d = {d_lap / results["config"]["d"]:.2f}), '
      f'mean over {results["config"]["seeds"]} seeds'
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


def _parse(argv) -> dict:
  """Parses this binary's flags from argv into a validated config."""
  for name in _FLAGS:  # back to defaults, so that repeated calls (tests) do not leak values
    _FLAGS[name].unparse()
  _FLAGS(argv)
  return config_from_flags(_FLAGS)


def make_config(**flag_values) -> dict:
  """The validated config of a run with these flags, the others at their defaults.

  For notebooks: make_config(workdir='/tmp/theory', d=120, alphas=[0.1, 1.0]) is
  `--workdir=/tmp/theory --d=120 --alphas=0.1,1.0`, checked as the binary checks it.
  """
  argv = ['linreg_theory']
  for name, value in flag_values.items():
    if isinstance(value, (list, tuple)):
      value = ','.join(str(v) for v in value)
    argv.append(f'--{name}={value}')
  return _parse(argv)


def compute(config: dict) -> dict:
  """Every number of the figures and the table (`run`) at the config's precision."""
  # Every matrix here is small: multi-threaded BLAS/LAPACK (jaxlib's CPU SVD calls scipy's, loaded
  # by the import above so that the limit reaches it) only adds synchronisation, up to 30x slower
  # on a busy 2-core machine.
  with jax.enable_x64(config['x64']), threadpoolctl.threadpool_limits(1, user_api='blas'):
    return run(config)


def main(argv):
  """Parses this binary's flags from argv, computes, writes the outputs and prints the table."""
  config = _parse(argv)
  start = time.time()
  results = compute(config)
  paths = write_outputs(results, config['workdir'])
  print(format_table(results))
  print(f'Wrote {", ".join(paths)} in {time.time() - start:.1f} s.')


def _parse_absl_flags(argv):
  """Lets absl parse its own flags and hands this binary's flags on to `main`."""
  if any(arg in ('-h', '--help', '-?', '--helpfull') for arg in argv[1:]):
    print(_FLAGS.get_help())
    sys.exit(0)
  return flags.FLAGS(argv, known_only=True)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_absl_flags)
