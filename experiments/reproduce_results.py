r"""Runs every comparison behind experiments/RESULTS.md and writes that page.

  python -m experiments.reproduce_results --workdir=results_wd

Comparisons (mnist5k, small CNN, seeds 0,1,2, each a `jaxunlearn.Study`; one whose results file
exists is not run again, and runs shared between comparisons are run once):
  * every registered method on random 10% and on class-3 forgetting;
  * every group of variants a method declares (SFR-on's 2^3 ablation of S, F and R-on, and its
    variants: Fisher estimator, mask threshold, forget frequency, the official formulation);
  * the discriminative-regulariser protocol of Ding, Xu, Ji: single-class forgetting of classes 3,
    6 and 9 with FT, CE-FT, KL-FT, ICE-FT and SalUn.
and the linear-regression theory figures (experiments/linreg_theory.py, written into
experiments/figures/theory/). `--only_render` rewrites RESULTS.md, and the trade-off picture of each
"All methods" table (`figures.plot`, all_methods.png next to the results files), from the results
already there, and the methods table between the README's `<!-- methods -->` markers from the
method registry.
"""

import json
import os
import shutil
import subprocess
import sys

from absl import flags

import jaxunlearn
from jaxunlearn import cli, figures, files, report

_WORKDIR = flags.DEFINE_string('workdir', 'results_wd', 'Where models and results go.')
_OUT = flags.DEFINE_string(
  'out', os.path.join(os.path.dirname(__file__), 'RESULTS.md'), 'The page to write.'
)
_SEEDS = flags.DEFINE_string('seeds', '0,1,2', 'Seeds of every comparison.')
_ONLY_RENDER = flags.DEFINE_bool(
  'only_render', False, 'Only rebuild the page from the published results (--results_dir).'
)
_COMPARISONS = flags.DEFINE_list(
  'comparisons', [], 'Results names of the comparisons to run (e.g. baselines); empty: every one.'
)
_WRITE_README = flags.DEFINE_bool(
  'write_readme', True, "Also rewrite the README's methods table from the method registry."
)
_RESULTS_DIR = flags.DEFINE_string(
  'results_dir',
  os.path.join(os.path.dirname(__file__), 'results'),
  'Where the results files (json/md/png of each comparison, no models) are copied and read from '
  'for the page.',
)
_SPEED = flags.DEFINE_string(
  'speed_out',
  os.path.join(os.path.dirname(os.path.dirname(__file__)), 'docs', 'speed.md'),
  'The speed page to write (from experiments/benchmarks/).',
)
_FIGURES_DIR = flags.DEFINE_string(
  'figures_dir',
  None,
  'Where the pictures of the tables go (default: --results_dir); the page '
  'links them under --results_dir.',
)

DISCRIMINATIVE = 'ft,ce_ft,kl_ft,ice_ft,salun'


def comparisons():
  """(forget spec, methods, results name) of every run behind the page."""
  runs = []
  for forget in ('random:0.1', 'class:3'):
    runs.append((forget, 'all', 'baselines'))
    runs += [(forget, group, group) for group in sorted(jaxunlearn.methods.groups())]
  for k in (6, 9):
    runs.append((f'class:{k}', DISCRIMINATIVE, 'discriminative'))
  return runs


# Each table: (section title, forget specs, [(results name, rows to take or None for all)]).
# A row a table already has is not taken again from a later file: SFR-on's row comes from the
# all-methods file, and only where that file predates it from the ablation's all-on variant (the
# `sfron` config itself); class 3 of the discriminative protocol reuses the all-methods runs.
SFRON_ROW = {'sfron-SFR': 'sfron'}
TABLES = (
  ('All methods', ('random:0.1', 'class:3'), (('baselines', None), ('sfron_ablation', SFRON_ROW))),
  (
    'SFR-on ablation (S = saliency mask, F = adaptive weights, R = R-on)',
    ('random:0.1', 'class:3'),
    (('sfron_ablation', None),),
  ),
  (
    'SFR-on variants (jaxunlearn/methods/sfron.py `variants`)',
    ('random:0.1', 'class:3'),
    (('sfron_ablation', SFRON_ROW), ('sfron_variants', None)),
  ),
  (
    'Discriminative regularisation (Ding, Xu, Ji v1 protocol)',
    ('class:3', 'class:6', 'class:9'),
    (('baselines', {m: m for m in DISCRIMINATIVE.split(',')}), ('discriminative', None)),
  ),
)
# Tables shown as a picture too (`figures.plot`), by section title: the name of its PNG.
FIGURES = {'All methods': 'all_methods'}
# The committed tables ran on one device (one CPU device, or one H100); pinned so that they
# reproduce to the last digit. The main job's default (-1) probes the CPU layout instead.
ONE_DEVICE = 1


def _config(forget, methods, name):
  return jaxunlearn.study_config(
    workdir=_WORKDIR.value,
    forget=forget,
    methods=methods,
    seeds=_SEEDS.value,
    results_name=name,
    num_devices=ONE_DEVICE,
  )


def _results_path(forget, name, root=None):
  tag = forget.replace(':', '-').replace(',', '-')
  return os.path.join(root or _WORKDIR.value, 'mnist5k-cnn', f'{tag}-split0', f'{name}.json')


def publish(forget, name) -> None:
  """Copies a comparison's results files from the workdir into --results_dir."""
  source = _results_path(forget, name)
  target = _results_path(forget, name, _RESULTS_DIR.value)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  for ext in ('.json', '.md', '.png'):
    if os.path.exists(source[:-5] + ext):
      shutil.copyfile(source[:-5] + ext, target[:-5] + ext)


def _load(forget, sources):
  """Merged summary rows (Original, Retrain first) of one split, from the results files and rows
  that `sources` names; and the payloads read."""
  rows, payloads, used = {}, [], []
  for name, take in sources:
    path = _results_path(forget, name, _RESULTS_DIR.value)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      payload = json.load(f)
    summary = payload['summary']
    before = len(rows)
    if take is None:
      rows.update(summary)
    else:
      rows.update({k: summary[k] for k in ('Original', 'Retrain') if k not in rows})
      rows.update(
        {new: summary[old] for old, new in take.items() if old in summary and new not in rows}
      )
    if len(rows) > before or take is None:
      payloads.append(payload)  # only the files the table's rows come from
      used.append(name)
  ordered = {k: rows[k] for k in ('Original', 'Retrain') if k in rows}
  ordered.update({k: v for k, v in rows.items() if k not in ordered})
  return ordered, payloads, used


THEORY_DIR = os.path.join(os.path.dirname(__file__), 'figures', 'theory')
THEORY_TEXT = """## Why fine-tuning fails to forget: the linear-regression theory

`python -m experiments.linreg_theory --config.workdir=experiments/figures/theory` (d = 400,
n_r = 100, n_f = 40, 5 seeds; every plotted number is in `figures/theory/results.json`).
Fine-tuning from the pretrained model reaches zero remaining loss and keeps zero unlearning loss:
it forgets nothing, while the golden model (retrained on D_r) has unlearning loss > 0. With
distinct features both remedies (reset the forget-only features, or keep only the remaining-only
features, then fine-tune) recover the golden model exactly. Under partial overlap both close part
of the gap; the remaining-data ("retain") option is closer than the forget-data option, and
neither reaches zero; the forget option is void at full overlap.

![loss curves](figures/theory/loss_curves.png)
![overlap sweep](figures/theory/overlap_sweep.png)
![alpha sweep](figures/theory/alpha_sweep.png)
"""


HERE = os.path.dirname(os.path.abspath(__file__))
FIGURE_NOTE = (
  "Left: each method's UA, RA, TA and MIA minus Retrain's (Retrain is the line at "
  '0), methods sorted by Avg. Gap; right: Avg. Gap against run time, with the Pareto '
  'front. Both value axes are linear within ±1 point and logarithmic beyond, so gaps '
  'of 10-50 points and differences of 0.1-2 points are readable in one picture.'
)


def gap_ranking(rows: dict) -> str:
  """A sentence ranking the unlearning methods by mean Avg. Gap to Retrain."""
  methods = sorted(
    (r['AvgGap']['mean'], name)
    for name, r in rows.items()
    if name not in ('Original', 'Retrain') and r.get('AvgGap', {}).get('n')
  )
  if not methods:
    return ''
  ranked = ', '.join(f'{name} {rows[name]["AvgGap"]["mean"]:.2f}' for _, name in methods)
  return f'By Avg. Gap to Retrain (lower is better): {ranked}.\n'


def _figure_path(forget, name, root=None):
  return _results_path(forget, name, root or _RESULTS_DIR.value)[:-5] + '.png'


def write_figures() -> None:
  """Draws the picture of every table named in FIGURES from the results files (--figures_dir)."""
  for title, forgets, sources in TABLES:
    for forget in forgets if title in FIGURES else ():
      rows, payloads, _ = _load(forget, sources)
      if payloads:
        path = _figure_path(forget, FIGURES[title], _FIGURES_DIR.value)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        figures.plot(rows, path, f'{title}: forget {forget} (seeds {_SEEDS.value}, mean ± std)')


def render() -> str:
  lines = [
    '# Results',
    '',
    'Every number below comes from `python -m experiments.reproduce_results` (this page is '
    'its output): mnist5k (4,000 train / 1,000 test real MNIST digits), the small CNN, '
    f'seeds {_SEEDS.value} (mean ± std over seeds; the split is fixed, split seed 0). '
    "Method settings: each method's defaults in `jaxunlearn/methods/`. Each table names "
    'the device its rows ran on. What the tables say, and what we tried to explain them: [results/FINDINGS.md](results/FINDINGS.md); step timings: '
    '[benchmarks/](benchmarks/).',
    '',
    report.TABLE_NOTE,
    '',
  ]
  for title, forgets, sources in TABLES:
    for forget in forgets:
      rows, payloads, used = _load(forget, sources)
      if not payloads:
        continue
      wall = sum(p['wall_seconds'] for p in payloads)
      devices = sorted({f'{p["device"]["count"]} x {p["device"]["kind"]}' for p in payloads})
      files = ', '.join(
        f'`{os.path.relpath(_results_path(forget, n, _RESULTS_DIR.value), HERE)}`' for n in used
      )
      lines += [
        f'## {title}: forget {forget}',
        '',
        report.study_table(rows, class_wise=forget.startswith('class')),
        '',
        gap_ranking(rows),
      ]
      if title in FIGURES:
        figure = os.path.relpath(_figure_path(forget, FIGURES[title]), HERE)
        lines += [
          f'![{title}, forget {forget}: difference to Retrain per metric, and Avg. Gap '
          f'against run time]({figure})',
          '',
          FIGURE_NOTE,
          '',
        ]
      lines += [
        f'Split digest `{payloads[0]["split"]["digest"][:16]}`, '
        f'{payloads[0]["split"]["num_forget"]} forget / '
        f'{payloads[0]["split"]["num_retain"]} retain examples; '
        f'{" and ".join(devices)}; wall time {wall / 60:.1f} min; every number per seed: '
        f'{files}.',
        '',
      ]
  missing = [
    f'`{methods}` on `{forget}`'
    for forget, methods, name in comparisons()
    if not os.path.exists(_results_path(forget, name, _RESULTS_DIR.value))
  ]
  if missing:
    lines += [
      '## Not measured yet',
      '',
      'These comparisons of `reproduce_results` have no results file yet, so no numbers are '
      'shown for them: ' + '; '.join(missing) + '.',
      '',
    ]
  for title, path, command, note in EXTRA_SECTIONS:
    lines += _extra_section(title, path, command, note)
  if os.path.exists(os.path.join(THEORY_DIR, 'overlap_sweep.png')):
    lines.append(THEORY_TEXT)
  return '\n'.join(lines)


# Results of other binaries, shown when their files are committed under --results_dir:
# (title, path without extension, the command that made them, what to read in them).
EXTRA_SECTIONS = (
  (
    "RFA-LoRA against gamma (the paper's Figure 5)",
    'rfa_lora_gamma',
    'python -m experiments.rfa_lora_gamma --workdir=results_wd',
    'Accuracy on D_r, D_f and the test set, and feature distance to the Original on D_r and D_f, '
    'against gamma (the weight of the D_f terms), mnist5k, small CNN, one RFA-LoRA run per gamma '
    'at its other defaults; the Original dotted, Retrain dashed.',
  ),
  (
    'RFA-LoRA on a ViT (attention adapters)',
    'mnist5k-vit/class-3-split0/results',
    'python -m experiments.unlearn --config=experiments/configs/unlearn_vit.py',
    'A small ViT trained by our training binary on mnist5k (the config gives its size and '
    'optimiser), forgetting class 3, one seed, 2 CPU cores; RFA-LoRA with adapters on the attention '
    'query and value projections, FT and SalUn with AdamW (their mnist5k SGD settings wrecked this '
    'ViT). RFA-LoRA ran with the defaults of that date: the mean-logits output target, no head '
    'adapter.',
  ),
  (
    'Many models: the NeurIPS 2023 forgetting score with its interval, KLOM, relearn time',
    'digits-mlp/random-0.1-split0/many_K128/many_models',
    'python -m experiments.many_models',
    "scikit-learn's digits, an MLP with two hidden layers, forgetting a random 10%, on 2 CPU cores "
    '(one JAX device per core, the models spread over them). K models per row: Retrain, the '
    'control (K more Retrain models: the ceiling of F), the Original (K models trained on all of '
    'D: the floor) and K runs of each method at its defaults, run k unlearning Original k. The '
    "picture shows each row's forget examples by per-example epsilon.",
  ),
  (
    'CIFAR-10 (JPEG q75 copy), 10k subset: forget random:0.1',
    'cifar10-subset10k/random-0.1-split0/tuned',
    'python -m experiments.tune --config=experiments/configs/cifar10_subset.py '
    '--config.forget=random:0.1 --config.seeds=0,1,2',
    'CIFAR-10 from `../shared/data` (JPEG quality 75, so not bit-equal to the original PNGs), a '
    'stratified training subset, the small CNN (`experiments/configs/cifar10_subset.py`; test '
    "set: all of CIFAR-10's). The methods are tuned by the rule of `experiments/tune.py` (each "
    'knob, the learning rate and the weight that sets how hard it pushes on D_f where it has one, '
    'at 0.3, 1 and 3 times its mnist5k default, every combination, one run each; the tuning table '
    'lists the knobs each method was given) against Retrain on split seed 1, then reported on '
    'split seed 0 (seeds 0, 1, 2; one Original, a Retrain per seed). A '
    'value chosen at the edge of its range means a larger budget could move that method.',
  ),
  (
    'CIFAR-10 (JPEG q75 copy), 10k subset: forget class:3',
    'cifar10-subset10k/class-3-split0/tuned',
    'python -m experiments.tune --config=experiments/configs/cifar10_subset.py '
    '--config.forget=class:3 --config.seeds=0,1,2',
    'As above (same Original, same tuning rule), forgetting class 3 (cat). Under class '
    'forgetting split seeds 1 and 0 forget the same examples, so the tuning runs are the seed-0 '
    'runs of the reported split: the choice is made on the data it is reported on.',
  ),
)


def _extra_section(title: str, path: str, command: str, note: str) -> list[str]:
  """A section of RESULTS.md from another binary's committed .md (its table) and .png."""
  base = os.path.join(_RESULTS_DIR.value, path)
  if not (os.path.exists(base + '.md') or os.path.exists(base + '.png')):
    return []
  lines = [f'## {title}', '', f'`{command}`', '', note, '']
  if os.path.exists(base + '.md'):
    with open(base + '.md') as f:
      body = f.read().split('\n', 1)[1].strip()  # without its own heading
    lines += [body, '']
  if os.path.exists(base + '.png'):
    lines += [f'![{title}]({os.path.relpath(base + ".png", HERE)})', '']
  if os.path.exists(base + '.json'):
    with open(base + '.json') as f:
      payload = json.load(f)
    if 'summary' in payload:
      lines.append(gap_ranking(payload['summary']))
    if 'merged' in payload:
      merged = payload['merged']
      lines += [
        '',
        'Rows of this run: ' + ', '.join(merged['rows_of_this_run']) + '. Rows kept from an '
        'earlier run of the same protocol (`experiments/tune.py --keep_from`; its Original and '
        'Retrain rows equal these score by score): ' + ', '.join(merged['rows_kept']) + '.',
      ]
    elif 'num_models' in payload:
      lines += [many_rankings(payload), '']
  tuning = os.path.join(os.path.dirname(base), 'tuning.json')
  if os.path.exists(tuning):
    lines += tuning_table(tuning)
  if os.path.exists(base + '.json'):
    lines += [f'Every number: `{os.path.relpath(base + ".json", HERE)}`.', '']
  return lines


def many_rankings(payload: dict) -> str:
  """Sentences ranking a many-model table's rows by F and by Avg. Gap, with the control and
  Original rows as the ceiling and the floor of F."""
  rows = {name: r for name, r in payload['rows'].items() if 'F' in r}
  by_f = sorted(rows, key=lambda n: -rows[n]['F'])
  by_gap = sorted(rows, key=lambda n: rows[n]['AvgGap'])
  overlap_free = [
    (a, b)
    for i, a in enumerate(by_f)
    for b in by_f[i + 1 :]
    if a not in ('Control', 'Original')
    and b not in ('Control', 'Original')
    and rows[a]['F_low'] > rows[b]['F_high']
  ]
  return (
    f'By F (K = {payload["num_models"]}, higher is better): '
    + ', '.join(f'{n} {rows[n]["F"]:.3f}' for n in by_f)
    + '. By Avg. Gap (lower is better): '
    + ', '.join(f'{n} {rows[n]["AvgGap"]:.2f}' for n in by_gap)
    + f'. {len(overlap_free)} pairs of '
    'methods have intervals of F that do not overlap.'
  )


def tuning_table(path: str) -> list[str]:
  """The choices of `experiments/tune.py` (its tuning.json) as markdown lines: per method its
  knobs and every combination tried, with its Avg. Gap; the chosen one in bold."""
  with open(path) as f:
    tuning = json.load(f)
  multipliers = ', '.join(tuning['multipliers'])
  lines = [
    f'Tuning on split seed {tuning["tune_split_seed"]}, one run per combination of each '
    f'knob at {multipliers} x its default (Avg. Gap to Retrain; the chosen one in bold):',
    '',
    '| Method | Knobs | Runs | Trials |',
    '|---|---|---|---|',
  ]
  for name, choice in tuning['methods'].items():
    fields = [knob.removeprefix('1-') for knob in choice['knobs']]
    cells = []
    for trial in choice['trials']:
      text = ', '.join(f'{trial["values"][f]:g}' for f in fields) + f': {trial["AvgGap"]:.2f}'
      cells.append(f'**{text}**' if trial['values'] == choice['chosen'] else text)
    knobs = ', '.join(f'`{k}`' for k in choice['knobs'])
    lines.append(f'| {name} | {knobs} | {len(choice["trials"])} | {"; ".join(cells)} |')
  fewer = [
    name
    for name, choice in tuning['methods'].items()
    if name in jaxunlearn.methods.names()
    and len(choice['knobs']) < len(jaxunlearn.methods.get(name).tune)
  ]
  if fewer:
    lines += [
      '',
      'Tuned on fewer knobs than the rule now grids (their tuning predates the second knob): '
      + ', '.join(fewer)
      + '.',
    ]
  return lines + ['', f'Every trial: `{os.path.relpath(path, HERE)}`.', '']


BENCHMARKS = os.path.join(HERE, 'benchmarks')
SPEED_INTRO = """# Speed

Written by `python -m experiments.reproduce_results` from the JSON files in
[experiments/benchmarks/](../experiments/benchmarks/), each with its device, versions and command.

## jaxunlearn against PyTorch

`python -m experiments.benchmark --config.reference=torch` (`pip install -e '.[bench]'`): the same
model, batch, loss and update in PyTorch (`experiments/torch_reference.py`, eager) and in
jaxunlearn, started from the same weights; both sides' losses agree over the first steps before
anything is timed, and the two are timed alternately in one process. Each number is time per step,
jaxunlearn / PyTorch (below 1: jaxunlearn is faster). SGD = one cross-entropy step with momentum and
weight decay; SalUn = the same with a saliency mask on the update; SFR-on = one full SFR-on
iteration. On CPU the JAX side ran on one device per core (data-parallel) and, where the file has
it, on one device. "default layout" (files since the layout probe): the faster of the two, which
is what a single-model run with the default `--config.num_devices=-1` picks by its timed probe
(`jaxunlearn.experiment.probe_cpu_layout`); before the probe, single-model runs used one device.
PyTorch's OpenMP threads spin at every barrier by default: on cores that other processes load, its
step then grows several-fold while XLA's barely moves, so only runs with the wait policy PASSIVE
or on a quiet machine (a low load average) compare fairly.
"""
MANY_INTRO = """## Many models in one program

`python -m experiments.benchmark --config.methods=ft --many=8,32`: K copies of a training step as
one compiled program (`loop.run_many`), time of K single steps / time of the K-model step (above
1: the K-model program is faster). On CPU, vmapped convolutions with per-model kernels are slow, so
`run_many` unrolls the models of a convolutional network there.
"""
STEPS_INTRO = """## Method steps against Retrain's step

`python -m experiments.benchmark --config.methods=all`: each method's time per step of each step
kind, over the Retrain (supervised) step's on the same model and batch.
"""


def _benchmark_files() -> list[tuple[str, dict]]:
  files = []
  for name in sorted(os.listdir(BENCHMARKS)):
    if name.endswith('.json'):
      with open(os.path.join(BENCHMARKS, name)) as f:
        files.append((name, json.load(f)))
  return files


def _where(name: str, payload: dict) -> str:
  device = payload.get('device', {})
  if isinstance(device, dict):
    kind = device.get('torch_device_name') or device.get('kind', '')
    return f'`{name}` ({device.get("jax_platform") or device.get("platform", "")}, {kind})'
  return f'`{name}` ({device})'


def torch_table(name: str, payload: dict) -> list[str]:
  """Time per step jaxunlearn / PyTorch of every case and step of a torch-reference file."""
  sides = ('jax', 'jax_1device')
  policy = payload.get('env', {}).get('OMP_WAIT_POLICY') or 'unset: spinning'
  load = payload.get('load_average', {}).get('before', [float('nan')])[0]
  # Files written before the benchmark timed the library's own steps hold a JAX copy of them.
  jax_side = payload.get('jax_side', 'a JAX copy of the steps')
  lines = [
    f'{_where(name, payload)}, OpenMP wait policy {policy}, load average {load:.1f} before, '
    f'JAX side {jax_side}:',
    '',
    '| Case | Step | jaxunlearn / PyTorch | one JAX device | default layout |',
    '|---|---|---|---|---|',
  ]
  for case, kinds in payload['results'].items():
    for kind, result in kinds.items():
      cells = [
        f'{result[side]["time_ratio_jax_over_torch"]:.2f}' if side in result else ''
        for side in sides
      ]
      default = result.get('default_layout')  # files since the CPU layout probe
      cells.append(
        f'{default["time_ratio_jax_over_torch"]:.2f} ({default["devices"]} device'
        f'{"s" if default["devices"] > 1 else ""})'
        if default
        else ''
      )
      lines.append(f'| {case} | {kind} | ' + ' | '.join(cells) + ' |')
  return lines + ['']


def many_table(name: str, payload: dict) -> list[str]:
  """The speed-up of K models in one program over K single steps, per K and form."""
  entries = {k: v for k, v in payload['many_models'].items() if k.startswith('K=')}
  forms = sorted({f for v in entries.values() for f in v if isinstance(v[f], dict)})
  order = sorted(entries, key=lambda k: int(k[2:]))
  lines = [
    _where(name, payload) + ':',
    '',
    '| Form | ' + ' | '.join(order) + ' |',
    '|---|' + '---|' * len(order),
  ]
  for form in forms:
    cells = [f'{entries[k][form]["speedup"]:.2f}x' if form in entries[k] else '' for k in order]
    lines.append(f'| {form} | ' + ' | '.join(cells) + ' |')
  return lines + ['']


def steps_table(name: str, payload: dict) -> list[str]:
  """Each row's time per step of each step kind over the Retrain step's."""
  lines = [
    _where(name, payload) + f', {payload.get("model")} at batch {payload.get("batch_size")}:',
    '',
    '| Method | Step kind | Time / Retrain step |',
    '|---|---|---|',
  ]
  for row, timing in payload['results'].items():
    for kind, values in timing.get('kinds', {}).items():
      ratio = values.get('step_time_vs_retrain_step')
      if ratio is not None:
        lines.append(f'| {row} | {kind} | {ratio:.2f} |')
    equal = timing.get('equal_examples')
    for kind, values in (equal or {}).get('kinds', {}).items():
      lines.append(
        f'| {row} (at {equal["batch_size_per_slot"]} per slot) | {kind} | '
        f'{values["step_time_vs_retrain_step"]:.2f} |'
      )
  return lines + ['']


def speed_page() -> str:
  """docs/speed.md: the tables of every benchmark file."""
  files = _benchmark_files()
  lines = [SPEED_INTRO]
  for name, payload in files:
    if 'cases' in payload:
      lines += torch_table(name, payload)
  lines.append(MANY_INTRO)
  for name, payload in files:
    if 'many_models' in payload:
      lines += many_table(name, payload)
  lines.append(STEPS_INTRO)
  for name, payload in files:
    if 'results' in payload and 'cases' not in payload:
      lines += steps_table(name, payload)
  return '\n'.join(lines)


README = os.path.join(os.path.dirname(HERE), 'README.md')
METHODS_MARKERS = ('<!-- methods -->', '<!-- /methods -->')


def methods_table() -> str:
  """The README's methods table, from the method registry."""
  lines = ['| Name (`--config.methods`) | Method | Notes |', '|---|---|---|']
  for name, method in jaxunlearn.methods.methods().items():
    notes = [method.summary] if method.summary else []
    if method.presets:
      notes.append('presets: ' + ', '.join(f'`{p}`' for p in method.presets))
    if method.groups:
      notes.append('groups: ' + ', '.join(f'`{g}`' for g in method.groups))
    lines.append(f'| `{name}` | {method.title} | {"; ".join(notes)} |')
  return '\n'.join(lines)


def with_methods_table(readme: str) -> str:
  """`readme` with the text between the methods markers replaced by `methods_table`."""
  start, end = METHODS_MARKERS
  head, rest = readme.split(start, 1)
  _, tail = rest.split(end, 1)
  return f'{head}{start}\n{methods_table()}\n{end}{tail}'


def main(argv):
  del argv
  if not _ONLY_RENDER.value:
    if not os.path.exists(os.path.join(THEORY_DIR, 'overlap_sweep.png')):
      subprocess.run(
        [sys.executable, '-m', 'experiments.linreg_theory', f'--config.workdir={THEORY_DIR}'],
        check=True,
      )
    for forget, methods, name in comparisons():
      if _COMPARISONS.value and name not in _COMPARISONS.value:
        continue
      if not os.path.exists(_results_path(forget, name)):
        jaxunlearn.Study(_config(forget, methods, name)).run()
      publish(forget, name)
  write_figures()
  files.write_text(_OUT.value, render() + '\n')
  print(f'wrote {_OUT.value}')
  files.write_text(_SPEED.value, speed_page())
  print(f'wrote {_SPEED.value}')
  if _WRITE_README.value:
    with open(README) as f:
      readme = f.read()
    files.write_text(README, with_methods_table(readme))
    print(f'wrote the methods table of {README}')


if __name__ == '__main__':
  cli.run(main)
