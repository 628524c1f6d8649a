"""Results files of the main job (results.json, results.md with its table, results.png) and the
tables and sentences of the results pages built from such files (experiments/RESULTS.md,
docs/speed.md, the README's methods table).

Every table goes through `markdown_table`; the pictures are in `jaxunlearn.figures`.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import jax

from jaxunlearn import comparison, figures, files

REFERENCE_ROWS = ('Original', 'Retrain')
COLUMNS = ('UA', 'RA', 'TA', 'MIA', 'AvgGap', 'ToW', 'KL', 'FD_r', 'RTE_s', 'trainable_fraction')
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
REFERENCE_ROWS = ('Original', 'Retrain')


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
# The most rows a Group column letters: one letter each, and the letters' construction grows
# with the number of differing pairs (a tuning study's hundreds of trials are not ranked).
MAX_GROUPED_ROWS = 26


def grouped_scores(per_seed: dict[str, list[dict]] | None) -> dict:
  """The Avg. Gap per seed of the rows a Group column letters (`comparison.seed_scores`; none
  with more than `MAX_GROUPED_ROWS` rows)."""
  scores = comparison.seed_scores(per_seed or {}, exclude=REFERENCE_ROWS)
  return scores if len(scores) <= MAX_GROUPED_ROWS else {}


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
      whose Avg. Gap cannot be told apart (`comparison.tie_groups`; '-': not run on every seed;
      up to `MAX_GROUPED_ROWS` rows).
    tuning: {method: its Avg. Gap on the tuning split}; adds a column beside the reported
      Avg. Gap, '(!)' where the reported mean lies outside it ± 2 reported stds
      (`comparison.transfer`).

  Returns:
    The markdown table.
  """
  columns = COLUMNS[:3] + (CLASS_COLUMNS if class_wise else ()) + COLUMNS[3:5]
  extra = {name: {} for name in rows}
  scores = grouped_scores(per_seed)
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


def merge_rows(
  summaries: Sequence[tuple[dict, Mapping[str, str] | None]],
) -> tuple[dict[str, dict], list[int]]:
  """One table's rows from the summaries of several results files, Original and Retrain first.

  Args:
    summaries: (a results file's summary, the rows to take from it as {row: name in the table},
      or None for all of them), in order; a row the table already has is not taken again.

  Returns:
    The rows, and the positions in `summaries` of the files the rows come from (a file whose
    rows are all taken counts even when it adds none).
  """
  rows, used = {}, []
  for i, (summary, take) in enumerate(summaries):
    before = len(rows)
    if take is None:
      rows.update(summary)
    else:
      rows.update({k: summary[k] for k in REFERENCE_ROWS if k not in rows})
      rows.update(
        {new: summary[old] for old, new in take.items() if old in summary and new not in rows}
      )
    if len(rows) > before or take is None:
      used.append(i)
  ordered = {k: rows[k] for k in REFERENCE_ROWS if k in rows}
  ordered.update({k: v for k, v in rows.items() if k not in ordered})
  return ordered, used


def gap_ranking(rows: dict) -> str:
  """A sentence ranking a study's unlearning methods by mean Avg. Gap to Retrain ('' if none)."""
  methods = sorted(
    (r['AvgGap']['mean'], name)
    for name, r in rows.items()
    if name not in REFERENCE_ROWS and r.get('AvgGap', {}).get('n')
  )
  if not methods:
    return ''
  ranked = ', '.join(f'{name} {rows[name]["AvgGap"]["mean"]:.2f}' for _, name in methods)
  return f'By Avg. Gap to Retrain (lower is better): {ranked}.\n'


def ranking_line(rows: dict, per_seed: dict[str, list[dict]] | None = None) -> str:
  """The ranking sentence of a study: in groups of methods whose Avg. Gap cannot be told apart
  (`comparison.ranking_in_groups`) when it ran 2 seeds or more, else by mean Avg. Gap."""
  scores = comparison.seed_scores(per_seed or {}, exclude=REFERENCE_ROWS)
  if scores:
    return comparison.ranking_in_groups(scores) + '\n'
  return gap_ranking(rows)


def many_model_rankings(payload: dict) -> str:
  """Sentences ranking a many-model results file's rows by F and by Avg. Gap, and counting the
  pairs of methods (the control and the Original left out) whose intervals of F do not overlap."""
  rows = {name: r for name, r in payload['rows'].items() if 'F' in r}
  by_f = sorted(rows, key=lambda n: -rows[n]['F'])
  by_gap = sorted(rows, key=lambda n: rows[n]['AvgGap'])
  methods = [n for n in by_f if n not in ('Control', 'Original')]
  separated = [
    (a, b)
    for i, a in enumerate(methods)
    for b in methods[i + 1 :]
    if rows[a]['F_low'] > rows[b]['F_high']
  ]
  return (
    f'By F (K = {payload["num_models"]}, higher is better): '
    + ', '.join(f'{n} {rows[n]["F"]:.3f}' for n in by_f)
    + '. By Avg. Gap (lower is better): '
    + ', '.join(f'{n} {rows[n]["AvgGap"]:.2f}' for n in by_gap)
    + f'. {len(separated)} pairs of methods have intervals of F that do not overlap.'
  )


def results_notes(payload: dict) -> list[str]:
  """Markdown lines under a results file's table: its ranking (a study's by Avg. Gap, a
  many-model file's by F and Avg. Gap) and, for a study merged from two runs, which rows each
  gave."""
  lines = []
  if 'summary' in payload:
    lines.append(ranking_line(payload['summary'], payload.get('per_seed')))
    tuning = payload.get('tuning_scores')
    if tuning:
      moved = comparison.transfer(tuning, payload['summary'])
      flagged = [name for name, t in moved.items() if t['outside']]
      if flagged:
        lines += [
          'Chosen settings that did not transfer from the tuning split (reported mean outside '
          'the tuning score ± 2 reported stds): ' + ', '.join(flagged) + '.',
          '',
        ]
  if 'merged' in payload:
    merged = payload['merged']
    lines += [
      '',
      'Rows of this run: ' + ', '.join(merged['rows_of_this_run']) + '. Rows kept from an '
      'earlier run of the same protocol (`experiments/tune.py --keep_from`; its Original and '
      'Retrain rows equal these score by score): ' + ', '.join(merged['rows_kept']) + '.',
    ]
  elif 'num_models' in payload:
    lines += [many_model_rankings(payload), '']
  return lines


def study_provenance(payloads: Sequence[dict], paths: Sequence[str]) -> str:
  """A sentence on the studies behind a table: the split, the devices, the wall time and the
  results files (`paths`) that hold every number per seed."""
  split = payloads[0]['split']
  devices = sorted({f'{p["device"]["count"]} x {p["device"]["kind"]}' for p in payloads})
  wall = sum(p['wall_seconds'] for p in payloads)
  listed = ', '.join(f'`{path}`' for path in paths)
  return (
    f'Split digest `{split["digest"][:16]}`, {split["num_forget"]} forget / '
    f'{split["num_retain"]} retain examples; {" and ".join(devices)}; wall time '
    f'{wall / 60:.1f} min; every number per seed: {listed}.'
  )


def _tuning_cell(choice: dict, key: str) -> str:
  if key == 'Knobs':
    return ', '.join(f'`{k}`' for k in choice['knobs'])
  if key == 'Runs':
    if 'budget' not in choice:  # a tuning.json of the one-run-per-combination rule
      return str(len(choice['trials']))
    spent = choice['budget']
    parts = [f'{spent["grid_runs"]} grid', f'{spent["extension_runs"]} extension']
    if spent.get('midpoint_runs'):
      parts.append(f'{spent["midpoint_runs"]} midpoint')
    return f'{spent["runs"]} ({" + ".join(parts)})'
  if key == 'Edges':
    return ', '.join(f'{field}: {where}' for field, where in choice['edges'].items())
  fields = [knob.removeprefix('1-') for knob in choice['knobs']]
  cells = []
  for trial in choice['trials']:
    seeds = len(trial.get('per_seed', {}))
    text = ', '.join(f'{trial["values"][f]:g}' for f in fields) + f': {trial["AvgGap"]:.2f}'
    text += f' x{seeds}' if seeds > 1 else ''
    cells.append(f'**{text}**' if trial['values'] == choice['chosen'] else text)
  return '; '.join(cells)


def tuning_table(tuning: dict) -> str:
  """The choices of an equal-budget tuning (the tuning.json of `experiments/tune.py`): a line on
  the rule, then per method its knobs, runs, where its choice sits on its grid (rule of
  `jaxunlearn.tuning`) and every setting tried with its Avg. Gap, the chosen one in bold."""
  multipliers = ', '.join(tuning['multipliers'])
  if 'rule' not in tuning:  # the rule before `jaxunlearn.tuning`
    return (
      f'Tuning on split seed {tuning["tune_split_seed"]}, one run per combination of each knob '
      f'at {multipliers} x its default (Avg. Gap to Retrain; the chosen one in bold):\n\n'
      + markdown_table(tuning['methods'], ('Knobs', 'Runs', 'Trials'), _tuning_cell)
    )
  first, *others = tuning['tune_seeds']
  runs = tuning.get('runs_per_method')
  spend = (
    f' Every method makes {runs} runs: the ones left go to the next-best settings on the seeds '
    'they lack and to midpoints between the choice and its best neighbour.'
    if runs
    else ''
  )
  return (
    f'Tuning on split seed {tuning["tune_split_seed"]} by the rule of `jaxunlearn.tuning`: '
    f'{tuning["settings_per_method"]} grid settings per method from {multipliers} x each '
    f"knob's default, each run on seed {first}, the best third also on seed"
    f'{"s" if len(others) > 1 else ""} {", ".join(map(str, others))}, a grid whose best value '
    f'sits on an edge extended there.{spend} Trials: Avg. Gap to Retrain, the mean over the seeds a '
    'setting ran on (xN: on N seeds); the chosen one in bold:\n\n'
    + markdown_table(tuning['methods'], ('Knobs', 'Runs', 'Edges', 'Trials'), _tuning_cell)
  )


def methods_table(methods: Mapping[str, Any]) -> str:
  """One row per registered method (`jaxunlearn.methods.methods()`): its title, summary, presets
  and groups."""

  def cell(method, key: str) -> str:
    if key == 'Method':
      return method.title
    notes = [method.summary] if method.summary else []
    if method.presets:
      notes.append('presets: ' + ', '.join(f'`{p}`' for p in method.presets))
    if method.groups:
      notes.append('groups: ' + ', '.join(f'`{g}`' for g in method.groups))
    return '; '.join(notes)

  rows = {f'`{name}`': method for name, method in methods.items()}
  return markdown_table(rows, ('Method', 'Notes'), cell, first='Name (`--config.methods`)')


def _reference_cell(result: dict, key: str) -> str:
  side = {'jaxunlearn / PyTorch': 'jax', 'one JAX device': 'jax_1device'}.get(key)
  if side is not None:
    return f'{result[side]["time_ratio_jax_over_torch"]:.2f}' if side in result else ''
  default = result.get('default_layout')
  if default is None:  # a file from a benchmark without the CPU layout probe
    return ''
  devices = default['devices']
  return (
    f'{default["time_ratio_jax_over_torch"]:.2f} ({devices} device{"s" if devices > 1 else ""})'
  )


def torch_reference_table(results: dict) -> str:
  """Time per step jaxunlearn / PyTorch of every case and step kind of a PyTorch-reference
  benchmark (`experiments/reference_benchmark.py`): data parallel over the JAX devices, on one
  JAX device, and in the layout the main job's probe picks."""
  rows = {
    f'{case} ({kind})': result for case, kinds in results.items() for kind, result in kinds.items()
  }
  columns = ('jaxunlearn / PyTorch', 'one JAX device', 'default layout')
  return markdown_table(rows, columns, _reference_cell, first='Case (step)')


def many_models_speed_table(many_models: dict) -> str:
  """The speed-up of K models in one program over K single steps (`benchmarking.many_models_speed`),
  one row per form, one column per K."""
  entries = {k: v for k, v in many_models.items() if k.startswith('K=')}
  order = sorted(entries, key=lambda k: int(k[2:]))
  forms = sorted({f for v in entries.values() for f in v if isinstance(v[f], dict)})
  rows = {form: {k: entries[k][form] for k in order if form in entries[k]} for form in forms}
  cell = lambda row, k: f'{row[k]["speedup"]:.2f}x' if k in row else ''
  return markdown_table(rows, order, cell, first='Form')


def step_ratio_table(results: dict) -> str:
  """Each method's time per step of each step kind over the Retrain step's
  (`benchmarking.benchmark`), also at the equal-examples batch where it was timed."""
  rows = {}
  for row, timing in results.items():
    for kind, values in timing['kinds'].items():
      if 'step_time_vs_retrain_step' in values:  # not the Retrain step itself
        rows[f'{row} ({kind})'] = values
    equal = timing.get('equal_examples', {'kinds': {}})
    for kind, values in equal['kinds'].items():
      rows[f'{row} at {equal["batch_size_per_slot"]} per slot ({kind})'] = values
  cell = lambda values, _: f'{values["step_time_vs_retrain_step"]:.2f}'
  return markdown_table(rows, ('Time / Retrain step',), cell, first='Method (step kind)')


def _where(name: str, payload: dict) -> str:
  """A benchmark file's name, platform and device (the torch device for a PyTorch reference)."""
  device = payload['device']
  # Besides `provenance`'s keys, a PyTorch-reference file names the torch device; some name the
  # JAX platform 'jax_platform'.
  kind = device.get('torch_device_name') or device['kind']
  return f'`{name}` ({device.get("jax_platform") or device["platform"]}, {kind})'


def _speed_heading(kind: str, name: str, payload: dict) -> str | None:
  """The line above a benchmark file's table of `kind`; None when the file has no such table."""
  if kind == 'torch_reference' and 'cases' in payload:
    policy = payload['env']['OMP_WAIT_POLICY'] or 'unset: spinning'
    # A file without 'jax_side' timed a JAX copy of the library's steps.
    jax_side = payload.get('jax_side', 'a JAX copy of the steps')
    return (
      f'{_where(name, payload)}, OpenMP wait policy {policy}, load average '
      f'{payload["load_average"]["before"][0]:.1f} before, JAX side {jax_side}:'
    )
  if kind == 'many_models' and 'many_models' in payload:
    return f'{_where(name, payload)}:'
  if kind == 'method_steps' and 'results' in payload and 'cases' not in payload:
    return f'{_where(name, payload)}, {payload["model"]} at batch {payload["batch_size"]}:'
  return None


SPEED_TABLES = {
  'torch_reference': lambda payload: torch_reference_table(payload['results']),
  'many_models': lambda payload: many_models_speed_table(payload['many_models']),
  'method_steps': lambda payload: step_ratio_table(payload['results']),
}


def speed_page(text: str, benchmarks: Mapping[str, dict]) -> str:
  """The speed page: `text` with each ``<!-- tables: KIND -->`` marker (a key of SPEED_TABLES)
  replaced by the tables of that kind of every benchmark file.

  Args:
    text: the page's text, with the markers.
    benchmarks: {file name: payload} of the benchmark files, in the order they are shown.
  """
  for kind, table in SPEED_TABLES.items():
    sections = []
    for name, payload in benchmarks.items():
      heading = _speed_heading(kind, name, payload)
      if heading is not None:
        sections.append(f'{heading}\n\n{table(payload)}\n')
    text = text.replace(f'<!-- tables: {kind} -->', '\n'.join(sections))
  return text


TABLE_NOTE = (
  'UA = 100 - accuracy on D_f; RA, TA = accuracy on D_r and the test set (%); '
  'MIA = MIA-Efficacy, % of D_f predicted non-member; AvgGap = mean |diff| to Retrain '
  'over UA, RA, TA, MIA; ToW = product over D_f, D_r and the test set of 1 - '
  "|accuracy - Retrain's| / 100 (higher is better); KL = KL(Retrain || method) on "
  'D_f (nats); FD_r = mean '
  'feature distance to the Original on D_r (L2, averaged over examples and layers); '
  'RTE_s = wall time '
  'of the unlearning phase in seconds, compilation excluded (Original/Retrain: '
  'training time); trainable_fraction = the share of the weights the method may change '
  "(RFA-LoRA: its LoRA weights over the model's)."
)


def study_note(per_seed: dict[str, list[dict]] | None = None, *, tuning: bool = False) -> str:
  """The note under a study table (`study_table` with the same `per_seed`; `tuning`: it has the
  tuning column)."""
  note = TABLE_NOTE
  if grouped_scores(per_seed):
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
