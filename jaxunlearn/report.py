"""Results files of the main job: results.json, results.md (a table) and results.png."""

from __future__ import annotations

import os
import tempfile

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from jaxunlearn.experiment import write_json  # noqa: E402

COLUMNS = ('UA', 'RA', 'TA', 'MIA', 'AvgGap', 'KL', 'RTE_s')
CLASS_COLUMNS = ('TA_retain', 'TA_forget')


def _cell(summary: dict, key: str) -> str:
  if key not in summary:
    return '-'
  s = summary[key]
  if not s['n']:
    return 'diverged'
  digits = 3 if key == 'KL' else 2
  if s['n'] > 1:
    return f'{s["mean"]:.{digits}f} ± {s["std"]:.{digits}f}'
  return f'{s["mean"]:.{digits}f}'


def markdown_table(rows: dict[str, dict], *, class_wise: bool) -> str:
  """One row per method (Original and Retrain first); mean ± std over seeds where n > 1."""
  columns = COLUMNS[:3] + (CLASS_COLUMNS if class_wise else ()) + COLUMNS[3:]
  header = '| Method | ' + ' | '.join(columns) + ' |'
  lines = [header, '|' + '---|' * (len(columns) + 1)]
  for name, summary in rows.items():
    share = summary.get('diverged', {}).get('mean', 0.0)
    if share > 0:
      name = f'{name} (diverged in {share:.0%} of seeds)'
    lines.append(f'| {name} | ' + ' | '.join(_cell(summary, c) for c in columns) + ' |')
  return '\n'.join(lines)


TABLE_NOTE = ('UA = 100 - accuracy on D_f; RA, TA = accuracy on D_r and the test set (%); '
              'MIA = MIA-Efficacy, % of D_f predicted non-member; AvgGap = mean |diff| to Retrain '
              'over UA, RA, TA, MIA; KL = KL(Retrain || method) on D_f (nats); RTE_s = wall time '
              'of the unlearning phase in seconds, compilation excluded (Original/Retrain: '
              'training time).')


def write_text(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def plot(rows: dict[str, dict], path: str, title: str) -> None:
  """Avg. Gap to Retrain and run time per method, with std error bars."""
  names = [n for n in rows if 'AvgGap' in rows[n]]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, label in ((axes[0], 'AvgGap', 'Avg. Gap to Retrain (lower is better)'),
                         (axes[1], 'RTE_s', 'Run time (s, log scale)')):
    keyed = [n for n in rows if key in rows[n]] if key == 'RTE_s' else names
    means = [rows[n][key]['mean'] for n in keyed]
    stds = [rows[n][key]['std'] for n in keyed]
    ax.bar(keyed, means, yerr=stds, capsize=3, color='tab:blue')
    ax.set_title(label)
    ax.tick_params(axis='x', rotation=45)
    if key == 'RTE_s':
      ax.set_yscale('log')
  fig.suptitle(title)
  fig.tight_layout()
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.png')
  os.close(fd)
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)


def write_results(directory: str, payload: dict, rows: dict[str, dict], *, class_wise: bool,
                  title: str, make_plot: bool = True, name: str = 'results') -> str:
  """Writes {name}.json, {name}.md and {name}.png into `directory`; returns the table."""
  table = markdown_table(rows, class_wise=class_wise)
  write_json(os.path.join(directory, f'{name}.json'), payload)
  write_text(os.path.join(directory, f'{name}.md'), f'# {title}\n\n{table}\n\n{TABLE_NOTE}\n')
  if make_plot:
    plot(rows, os.path.join(directory, f'{name}.png'), title)
  return table
