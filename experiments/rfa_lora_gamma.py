r"""RFA-LoRA's gamma study (the paper's Figure 5): accuracy on D_r, D_f and the test set, and feature
distance to the Original on D_r and D_f, against gamma, for sample and for class unlearning.

  python -m experiments.rfa_lora_gamma --workdir=results_wd --out=experiments/results/rfa_lora_gamma

Each gamma is one RFA-LoRA run of a `jaxunlearn.Study` (mnist5k, small CNN, seeds --seeds; runs are
saved and reused), on random 10% and class-3 forgetting. Writes {out}.json and {out}.png.
"""

import os

import numpy as np
from absl import flags

import jaxunlearn
from jaxunlearn import cli, figures

_WORKDIR = flags.DEFINE_string('workdir', 'results_wd', 'Where models and runs go.')
_OUT = flags.DEFINE_string(
  'out',
  os.path.join(os.path.dirname(__file__), 'results', 'rfa_lora_gamma'),
  'Output path without extension (.json and .png are written).',
)
_GAMMAS = flags.DEFINE_list(
  'gammas',
  ['0.03', '0.1', '0.3', '1', '3', '10', '30'],
  'Values of gamma (at least two orders of magnitude).',
)
_SEEDS = flags.DEFINE_string('seeds', '0', 'Seeds of every run.')
_FORGETS = flags.DEFINE_list('forgets', ['random:0.1', 'class:3'], 'Forget specs.')

PANELS = (
  ('RA', 'D_r accuracy'),
  ('FA', 'D_f accuracy'),
  ('TA', 'test accuracy'),
  ('FD_r', 'feature distance on D_r'),
  ('FD_f', 'feature distance on D_f'),
)


def sweep(config, gammas: list[float]) -> dict:
  """RFA-LoRA at every gamma of `gammas` on the study of `config` (its forget spec and seeds);
  returns {'gammas', 'rows': {metric: {'mean': [...], 'std': [...]}}, 'Original', 'Retrain'}."""
  rows = {}
  for gamma in gammas:
    config.method.rfa_lora.gamma = float(gamma)
    config.methods = 'rfa_lora'
    study = jaxunlearn.Study(config)
    study.run()
    summary = study.summary()
    rows[gamma] = summary['rfa_lora']
  keys = [k for k, _ in PANELS] + ['UA', 'AvgGap']
  out = {
    'gammas': list(map(float, gammas)),
    'rows': {
      k: {'mean': [rows[g][k]['mean'] for g in gammas], 'std': [rows[g][k]['std'] for g in gammas]}
      for k in keys
    },
  }
  for reference in ('Original', 'Retrain'):
    out[reference] = {k: summary[reference][k]['mean'] for k in keys if k in summary[reference]}
  return out


def plot(results: dict[str, dict], path: str) -> None:
  """One row of panels per forget spec: each metric against gamma (log x), with the Original
  and Retrain as horizontal lines."""
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
    len(results), len(PANELS), figsize=(3.3 * len(PANELS), 2.9 * len(results)), squeeze=False
  )
  for row, (forget, result) in enumerate(results.items()):
    for col, (key, label) in enumerate(PANELS):
      ax = axes[row][col]
      mean = np.asarray(result['rows'][key]['mean'])
      std = np.asarray(result['rows'][key]['std'])
      ax.errorbar(
        result['gammas'], mean, yerr=std, marker='o', color='tab:blue', capsize=3, label='RFA-LoRA'
      )
      for reference, style in (('Original', ':'), ('Retrain', '--')):
        if key in result[reference]:
          ax.axhline(
            result[reference][key],
            color='grey' if reference == 'Original' else 'black',
            linestyle=style,
            linewidth=1,
            label=reference,
          )
      ax.set_xscale('log')
      ax.set_xlabel('gamma (weight of the D_f terms)')
      ax.set_title(f'{label}\n(forget {forget})', fontsize=9)
      if col == 0:
        ax.legend(fontsize=7)
  fig.tight_layout()
  figures.save_figure(fig, path)
  plt.close(fig)


def main(argv):
  del argv
  results = {}
  for forget in _FORGETS.value:
    config = jaxunlearn.study_config(
      workdir=_WORKDIR.value,
      forget=forget,
      seeds=_SEEDS.value,
      plot=False,
      results_name='rfa_lora_gamma',
      num_devices=1,  # as the committed figure ran: one CPU device, no probe
    )
    results[forget] = sweep(config, [float(g) for g in _GAMMAS.value])
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  jaxunlearn.write_json(
    f'{_OUT.value}.json',
    {'seeds': _SEEDS.value, 'results': results, 'command': 'python -m experiments.rfa_lora_gamma'},
  )
  plot(results, f'{_OUT.value}.png')
  print(f'wrote {_OUT.value}.json and .png')


if __name__ == '__main__':
  cli.run(main)
