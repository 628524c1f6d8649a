"""Results files of the main job: results.json, results.md (a table) and results.png.

Every table goes through `markdown_table`; the pictures are in `jaxunlearn.figures`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from importlib import metadata

import jax

from jaxunlearn import comparison, figures, files

REFERENCE_ROWS = ('Original', 'Retrain')
COLUMNS = ('UA', 'RA', 'TA', 'MIA', 'AvgGap', 'ToW', 'KL', 'FD_r', 'RTE_s')
CLASS_COLUMNS = ('TA_retain', 'TA_forget')
MANY_MODEL_COLUMNS = (
  'UA',
  'RA',
  'TA',
  'MIA',
  'AvgGap',
  'ToW',
  'F',
  'score',
  'KLOM_forget_median',
  'KLOM_forget_p95',
  'KLOM_retain_median',
  'KLOM_test_median',
  'relearn_steps',
  'wall_s',
)
_THREE_DIGITS = ('KL', 'ToW', 'score')


def markdown_table(
  rows: dict[str, dict], columns: Sequence[str], cell: Callable[[dict, str], str], *, first='Method'
) -> str:
  """The one table renderer.

  Args:
    rows: {row label: scores}, in the order the rows are shown.
    columns: the score keys shown, in order.
    cell: ``cell(scores, key) -> str``, the text of one cell.
    first: the heading of the label column.

  Returns:
    A markdown table: one line per row, one column per key.
  """
  lines = [f'| {first} | ' + ' | '.join(columns) + ' |', '|' + '---|' * (len(columns) + 1)]
  for name, scores in rows.items():
    lines.append(f'| {name} | ' + ' | '.join(cell(scores, c) for c in columns) + ' |')
  return '\n'.join(lines)


def summary_cell(summary: dict, key: str) -> str:
  """Mean ± std over seeds of a score summary ({'mean', 'std', 'n'}; the std only where n > 1)."""
  if key not in summary:
    return '-'
  s = summary[key]
  if not s['n']:
    return 'diverged'
  digits = 3 if key in _THREE_DIGITS else 2
  if s['n'] > 1:
    return f'{s["mean"]:.{digits}f} ± {s["std"]:.{digits}f}'
  return f'{s["mean"]:.{digits}f}'


GROUP = 'Group'
TUNING = 'AvgGap (tuning)'


def study_table(
  rows: dict[str, dict],
  *,
  class_wise: bool,
  per_seed: dict[str, list[dict]] | None = None,
  tuning: dict[str, float] | None = None,
) -> str:
  """A study's table: one row per method (Original and Retrain first), mean ± std over seeds.

  Args:
    rows: {row: its summary ({score: {'mean', 'std', 'n'}})}; rows that diverged in some seeds
      say in how many.
    class_wise: adds the test accuracy on the remaining and the forgotten classes.
    per_seed: {row: scores per seed}; with 2 seeds or more, a Group column marks the methods
      whose Avg. Gap cannot be told apart (`comparison.tie_groups`; '-': not run on every seed).
    tuning: {method: its Avg. Gap on the tuning split}; adds a column beside the reported
      Avg. Gap, '(!)' where the reported mean lies outside it ± 2 reported stds
      (`comparison.transfer`).

  Returns:
    The markdown table.
  """
  columns = COLUMNS[:3] + (CLASS_COLUMNS if class_wise else ()) + COLUMNS[3:5]
  extra = {name: {} for name in rows}
  scores = comparison.seed_scores(per_seed or {}, exclude=REFERENCE_ROWS)
  if scores:
    columns += (GROUP,)
    letters = comparison.tie_groups(scores)
    for name in rows:
      if name not in REFERENCE_ROWS:
        extra[name][GROUP] = letters.get(name, '-')
  if tuning:
    columns += (TUNING,)
    for name, check in comparison.transfer(tuning, rows).items():
      extra[name][TUNING] = f'{check["tuning"]:.2f}' + (' (!)' if check['outside'] else '')
  columns += COLUMNS[5:]
  labelled = {}
  for name, summary in rows.items():
    share = summary.get('diverged', {}).get('mean', 0.0)
    label = f'{name} (diverged in {share:.0%} of seeds)' if share > 0 else name
    labelled[label] = {**summary, **extra[name]}
  return markdown_table(labelled, columns, _study_cell)


def _study_cell(scores: dict, key: str) -> str:
  if key in (GROUP, TUNING):
    return scores.get(key, '')
  return summary_cell(scores, key)


def many_model_cell(scores: dict, key: str) -> str:
  """A many-model score: F with its bootstrap interval, relearn steps with their std."""
  value = scores.get(key)
  if value is None:
    return '-'
  if key == 'F':
    return f'{value:.3f} [{scores["F_low"]:.3f}, {scores["F_high"]:.3f}]'
  if key == 'relearn_steps':
    return f'{value:.1f} ± {scores["relearn_steps_std"]:.1f}'
  return f'{value:.3f}' if key in _THREE_DIGITS or 'KLOM' in key else f'{value:.2f}'


def many_model_table(rows: dict[str, dict]) -> str:
  """One row per set of K models (Retrain first, then the control and the Original)."""
  return markdown_table(rows, MANY_MODEL_COLUMNS, many_model_cell, first='Row')


TABLE_NOTE = (
  'UA = 100 - accuracy on D_f; RA, TA = accuracy on D_r and the test set (%); '
  'MIA = MIA-Efficacy, % of D_f predicted non-member; AvgGap = mean |diff| to Retrain '
  'over UA, RA, TA, MIA; ToW = product over D_f, D_r and the test set of 1 - '
  "|accuracy - Retrain's| / 100 (higher is better); KL = KL(Retrain || method) on "
  'D_f (nats); FD_r = mean '
  'feature distance to the Original on D_r (L2, averaged over examples and layers); '
  'RTE_s = wall time '
  'of the unlearning phase in seconds, compilation excluded (Original/Retrain: '
  'training time).'
)


def study_note(per_seed: dict[str, list[dict]] | None = None, *, tuning: bool = False) -> str:
  """The note under a study table (`study_table` with the same `per_seed`; `tuning`: it has the
  tuning column)."""
  note = TABLE_NOTE
  if comparison.seed_scores(per_seed or {}, exclude=REFERENCE_ROWS):
    note += (
      f' {GROUP}: methods sharing a letter cannot be told apart by Avg. Gap ({comparison.TEST}, '
      f'level {comparison.LEVEL:g} per pair, not adjusted for the number of pairs; '
      'the runs of a seed share the Original, Retrain and split); letter a holds the lowest '
      "mean; '-': not run on every seed."
    )
  if tuning:
    note += (
      f' {TUNING}: the Avg. Gap of the chosen setting on the tuning split (mean over the tuning '
      "seeds); (!): the reported mean lies outside it ± 2 reported stds, so the tuning's choice "
      'did not transfer.'
    )
  return note


MANY_MODEL_NOTE = (
  'K models per row (seeds 0..K-1), single-model scores averaged over them. Control = a second '
  'set of K Retrain models (seeds K..2K-1): the best F attainable at this K; Original = K models '
  'trained on all of D: no forgetting. F = the NeurIPS 2023 challenge forgetting quality with a '
  '95% bootstrap interval over forget examples (higher is better, comparable at equal K only); '
  "score = F x RA/RA_retrain x TA/TA_retrain; AvgGap and ToW per model against Retrain's mean "
  'accuracies, then averaged; KLOM = KL between margin histograms over the K models and the K '
  'Retrain models (lower is better); relearn_steps = SGD steps on D_f until the forget accuracy '
  "is back at the Original's (mean ± std, capped); wall_s = wall time of the K runs together "
  '(preparation and compilation included).'
)


def write_results(
  directory: str, name: str, payload: dict, *, title: str, table: str, note: str, figure=None
) -> None:
  """The one writer of results files: {name}.json (`payload`), {name}.md (`title`, `table`,
  `note`) and, if `figure` is given, {name}.png, into `directory`."""
  files.write_json(os.path.join(directory, f'{name}.json'), payload)
  files.write_text(os.path.join(directory, f'{name}.md'), f'# {title}\n\n{table}\n\n{note}\n')
  if figure is not None:
    figures.save_figure(figure, os.path.join(directory, f'{name}.png'))


PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'tensorflow-datasets',
  'scikit-learn',
  'numpy',
)


def provenance(mesh=None) -> dict:
  """What results files record of where they were made: package versions and the devices.

  Args:
    mesh: the mesh the runs used; its devices are counted (default: every device JAX sees).
  """
  devices = list(mesh.devices.flat) if mesh is not None else jax.devices()
  return {
    'versions': {p: metadata.version(p) for p in PACKAGES},
    'device': {
      'platform': devices[0].platform,
      'kind': devices[0].device_kind,
      'count': len(devices),
      'host': platform.machine(),
    },
  }
