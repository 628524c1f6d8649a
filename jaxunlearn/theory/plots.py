"""The theory's three figures, drawn from `sweeps.compute`'s results, and the files they go to.

Each `plot_*` returns a `matplotlib.figure.Figure` (`jaxunlearn.figures.new_figure`, no pyplot
backend), so a notebook shows it inline and `write_outputs` saves it. Bands span min to max over
seeds around the mean.
"""

from __future__ import annotations

import json
import os

import numpy as np

from jaxunlearn import figures, files
from jaxunlearn.theory.sweeps import CURVE_METHODS, SWEEP_METHODS

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
LOG_FLOOR = 1e-10  # losses below it (an interpolator's rounding error) are drawn at it on log axes
DPI = 110


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


def _new_figure(figsize):
  return figures.new_figure(figsize=figsize, dpi=DPI, layout='constrained')


def plot_loss_curves(results: dict):
  """Remaining and unlearning loss along GD fine-tuning, both scenarios."""
  config = results['config']
  fig = _new_figure((13, 9))
  axes = fig.subplots(2, 2)
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
  """End-point unlearning loss and gap to golden against d_lap / d."""
  config = results['config']
  sweep = results['overlap_sweep']
  x = np.asarray(sweep['overlap_ratio'])
  fig = _new_figure((13, 5))
  axes = fig.subplots(1, 2)
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


def _alpha_style(name: str, budgets, index: int, colors) -> dict:
  if name == 'limit':
    return dict(
      color='C3', linestyle='--', linewidth=2, label='limit (closed form, any step budget)'
    )
  return dict(
    color=colors[index], linestyle='-', linewidth=1.8, label=f'after {budgets[index]} GD steps'
  )


def plot_alpha_sweep(results: dict):
  """Regularised FT's unlearning and remaining loss against alpha, both scenarios."""
  config = results['config']
  fig = _new_figure((13, 9))
  axes = fig.subplots(2, 2)
  for row, scenario in enumerate(('distinct', 'overlapping')):
    sweep = results['alpha_sweep'][scenario]
    alphas = np.asarray(sweep['alpha'])
    title = _scenario_title(config, scenario, results['loss_curves'][scenario]['d_lap'])
    series = [f'after_{b}_steps' for b in sweep['budgets']] + ['limit']
    colors = figures.colormap('viridis')(np.linspace(0.15, 0.85, len(sweep['budgets'])))
    for col, metric in enumerate(('unlearning_loss', 'remaining_loss')):
      ax = axes[row, col]
      floor = LOG_FLOOR if metric == 'remaining_loss' else None
      for i, name in enumerate(series):
        style = _alpha_style(name, sweep['budgets'], i, colors)
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


FIGURES = {
  'loss_curves.png': plot_loss_curves,
  'overlap_sweep.png': plot_overlap_sweep,
  'alpha_sweep.png': plot_alpha_sweep,
}


def write_outputs(results: dict, workdir: str) -> list[str]:
  """Writes the three figures (`FIGURES`) and results.json into workdir, each atomically.

  Returns:
    The paths written, results.json last.
  """
  paths = []
  for name, plot in FIGURES.items():
    path = os.path.join(workdir, name)
    figures.save_figure(plot(results), path)
    paths.append(path)
  path = os.path.join(workdir, 'results.json')
  files.write_text(path, json.dumps(results, indent=1))
  paths.append(path)
  return paths
