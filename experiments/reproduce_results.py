r"""Runs every comparison behind experiments/RESULTS.md and writes that page and docs/speed.md.

  python -m experiments.reproduce_results --workdir=results_wd
  python -m experiments.reproduce_results --only_render   # the pages from the files already there

Comparisons (mnist5k, small CNN, seeds 0,1,2, each a `jaxunlearn.Study`; one whose results file
exists is not run again, and runs shared between comparisons run once): every registered method on
random 10% and on class-3 forgetting; every group of variants a method declares, on the forget
kinds its table shows (SFR-on's 2^3 ablation of S, F and R-on, and its variants, on both;
RFA-LoRA's readings of sample unlearning on random 10%); the discriminative-regulariser protocol
of Ding, Xu, Ji (classes 3, 6 and 9 with FT, CE-FT, KL-FT, ICE-FT and SalUn); the
linear-regression theory figures (experiments/linreg_theory.py). `--only_render` rewrites RESULTS.md and the picture of each
"All methods" table from the results files, docs/speed.md from experiments/benchmarks/, and the
README's methods table from the method registry.
"""

import functools
import json
import os
import shutil
import subprocess
import sys

from absl import flags

import jaxunlearn
from jaxunlearn import cli, experiment, figures, files, report

HERE = os.path.dirname(os.path.abspath(__file__))
_WORKDIR = flags.DEFINE_string('workdir', 'results_wd', 'Where models and results go.')
_OUT = flags.DEFINE_string('out', os.path.join(HERE, 'RESULTS.md'), 'The page to write.')
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
  'results_dir', os.path.join(HERE, 'results'), 'Where results files are copied to and read from.'
)
_SPEED = flags.DEFINE_string(
  'speed_out',
  os.path.join(os.path.dirname(HERE), 'docs', 'speed.md'),
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
  """(forget spec, methods, results name) of every run behind the page: a group of variants runs
  on the forget specs of the tables that show it."""
  runs = []
  for forget in ('random:0.1', 'class:3'):
    runs.append((forget, 'all', 'baselines'))
    runs += [
      (forget, group, group)
      for group in sorted(jaxunlearn.methods.groups())
      if any(forget in forgets and group in dict(sources) for _, forgets, sources in TABLES)
    ]
  for k in (6, 9):
    runs.append((f'class:{k}', DISCRIMINATIVE, 'discriminative'))
  return runs


# Each table: (section title, forget specs, [(results name, rows to take or None for all)]).
# A row a table already has is not taken again from a later file: the variants table takes the
# ablation's all-on variant (the `sfron` config itself) as its SFR-on row; class 3 of the
# discriminative protocol reuses the all-methods runs.
SFRON_ROW = {'sfron-SFR': 'sfron'}
TABLES = (
  ('All methods', ('random:0.1', 'class:3'), (('baselines', None),)),
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
    "RFA-LoRA's sample mode (jaxunlearn/methods/rfa_lora.py `sample_readings`)",
    ('random:0.1',),
    (('rfa_lora_sample', None),),
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


def _config(forget, methods, name, workdir=None):
  return jaxunlearn.study_config(
    workdir=workdir or _WORKDIR.value,
    forget=forget,
    methods=methods,
    seeds=_SEEDS.value,
    results_name=name,
    num_devices=ONE_DEVICE,
  )


@functools.cache
def _experiment_dir(forget: str, root: str) -> str:
  """Where the experiment of the comparisons on `forget` keeps its files under `root`."""
  data, training, _ = experiment.sections(_config(forget, 'all', 'baselines', root))
  # The comparisons run on a built-in dataset, whose loaded name is its config value.
  return experiment.directories(data, training, data.dataset)[1]


def _results_path(forget, name, root=None, ext='.json'):
  return os.path.join(_experiment_dir(forget, root or _WORKDIR.value), name + ext)


def publish(forget, name) -> None:
  """Copies a comparison's results files from the workdir into --results_dir."""
  for ext in ('.json', '.md', '.png'):
    source = _results_path(forget, name, ext=ext)
    if os.path.exists(source):
      target = _results_path(forget, name, _RESULTS_DIR.value, ext)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.copyfile(source, target)


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _load(forget, sources):
  """Merged summary rows (Original, Retrain first) of one split, from the results files and rows
  that `sources` names; the payloads the rows come from and their results names."""
  paths = {name: _results_path(forget, name, _RESULTS_DIR.value) for name, _ in sources}
  found = [
    (name, take, _read_json(paths[name])) for name, take in sources if os.path.exists(paths[name])
  ]
  rows, used = report.merge_rows([(payload['summary'], take) for _, take, payload in found])
  return rows, [found[i][2] for i in used], [found[i][0] for i in used], found


THEORY_DIR = os.path.join(HERE, 'figures', 'theory')
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
FIGURE_NOTE = (
  "Left: each method's UA, RA, TA and MIA minus Retrain's (Retrain is the line at "
  '0), methods sorted by Avg. Gap; right: Avg. Gap against run time, with the Pareto '
  'front. Both value axes are linear within ±1 point and logarithmic beyond, so gaps '
  'of 10-50 points and differences of 0.1-2 points are readable in one picture.'
)
INTRO = (
  'Every number below comes from `python -m experiments.reproduce_results` (this page is '
  'its output): mnist5k (4,000 train / 1,000 test real MNIST digits), the small CNN, '
  'seeds {seeds} (mean ± std over seeds; the split is fixed, split seed 0). '
  "Method settings: the preset each method starts from for the table's forget kind, its defaults "
  'in `jaxunlearn/methods/` except on random 10%, where the `random_mnist5k` presets (the '
  'choices of the tuned table below, `jaxunlearn/methods/tuned_presets.py`) apply. Each table names '
  'the device its rows ran on. What the tables say, and what we tried to explain them: '
  '[results/FINDINGS.md](results/FINDINGS.md); step timings: [benchmarks/](benchmarks/). '
  'RTE_s of the runs made from 2026-12-04 to 2026-12-07 counted the unlearning steps twice: '
  'here the class-3 "All methods" table, RFA-LoRA\'s sample mode, and the CIFAR-10 tables\' rfa_lora '
  'rows (and salun and sfron on class 3); FINDINGS (2026-12-07, RTE) says by how much. Rows '
  'run since count them once.'
)


def write_figures() -> None:
  """Draws the picture of every table named in FIGURES from the results files (--figures_dir)."""
  for title, forgets, sources in TABLES:
    for forget in forgets if title in FIGURES else ():
      rows, payloads, _, _ = _load(forget, sources)
      if payloads:
        path = _results_path(
          forget, FIGURES[title], _FIGURES_DIR.value or _RESULTS_DIR.value, '.png'
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        figures.plot(rows, path, f'{title}: forget {forget} (seeds {_SEEDS.value}, mean ± std)')


def _table_section(title: str, forget: str, sources) -> list[str]:
  """A table of RESULTS.md with its ranking, picture and provenance; [] without results."""
  rows, payloads, used, found = _load(forget, sources)
  if not payloads:
    return []
  per_seed, _ = report.merge_rows([(payload['per_seed'], take) for _, take, payload in found])
  lines = [
    f'## {title}: forget {forget}',
    '',
    report.study_table(rows, class_wise=forget.startswith('class'), per_seed=per_seed),
    '',
    report.ranking_line(rows, per_seed),
  ]
  if title in FIGURES:
    figure = os.path.relpath(
      _results_path(forget, FIGURES[title], _RESULTS_DIR.value, '.png'), HERE
    )
    lines += [
      f'![{title}, forget {forget}: difference to Retrain per metric, and Avg. Gap '
      f'against run time]({figure})',
      '',
      FIGURE_NOTE,
      '',
    ]
  paths = [os.path.relpath(_results_path(forget, n, _RESULTS_DIR.value), HERE) for n in used]
  return lines + [report.study_provenance(payloads, paths), '']


def render() -> str:
  """RESULTS.md from the results files under --results_dir."""
  lines = ['# Results', '', INTRO.format(seeds=_SEEDS.value), '', report.TABLE_NOTE, '']
  for title, forgets, sources in TABLES:
    for forget in forgets:
      lines += _table_section(title, forget, sources)
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
    'ViT). RFA-LoRA ran with the settings its results file records (the mean-logits output '
    'target, no head adapter), not its defaults in `jaxunlearn/methods/`.',
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
    'mnist5k, tuned by the rule: forget random:0.1',
    'mnist5k-cnn/random-0.1-split0/tuned',
    'python -m experiments.tune --config.forget=random:0.1 --config.seeds=0,1,2 '
    '--config.methods=bad_teacher,ft,ga,l1_sparse,neggrad_plus,rfa_lora,rl,salun,scrub,ssd',
    'The small CNN on mnist5k, each method tuned by the rule of `jaxunlearn.tuning` (the same '
    'number of settings and of runs for every method, over all the knobs it declares: each '
    'setting on tuning seed 3 and the best third also on seed 4 of split seed 1, grids whose best '
    'sits on an edge extended, the runs left spent on the next-best settings and on midpoints '
    'around the choice), then reported on split seed 0 (seeds 0, 1, 2) beside its tuning score. '
    'All fourteen methods (CE-FT, KL-FT and ICE-FT joined by `--config.methods='
    'ce_ft,kl_ft,ice_ft --keep_from=experiments/results/mnist5k-cnn/random-0.1-split0`, SFR-on '
    'by `--config.methods=sfron` and the same `--keep_from`). These choices are the '
    '`random_mnist5k` presets (`jaxunlearn/methods/tuned_presets.py`), which a study forgetting '
    'random samples of mnist5k starts from: the "All methods" table above runs them.',
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
    lines += report.results_notes(_read_json(base + '.json'))
  tuning = os.path.join(os.path.dirname(base), 'tuning.json')
  if os.path.exists(tuning):
    lines += tuning_table(tuning)
  if os.path.exists(base + '.json'):
    lines += [f'Every number: `{os.path.relpath(base + ".json", HERE)}`.', '']
  return lines


def tuning_table(path: str) -> list[str]:
  """The choices in `experiments/tune.py`'s tuning.json at `path` as markdown lines, naming the
  methods tuned on fewer knobs than they declare, and the file."""
  tuning = _read_json(path)
  declared = jaxunlearn.methods.methods()
  fewer = [
    name
    for name, choice in tuning['methods'].items()
    if name in declared and len(choice['knobs']) < len(declared[name].tune)
  ]
  lines = report.tuning_table(tuning).split('\n')
  if fewer:
    lines += ['', 'Tuned on fewer knobs than their `tune` declares: ' + ', '.join(fewer) + '.']
  return lines + ['', f'Every trial: `{os.path.relpath(path, HERE)}`.', '']


BENCHMARKS = os.path.join(HERE, 'benchmarks')
# The text of docs/speed.md, with a marker where each kind of table goes (`report.speed_page`).
SPEED_TEXT = os.path.join(BENCHMARKS, 'speed_page.md')


def speed_page() -> str:
  """docs/speed.md: the text of SPEED_TEXT with the tables of every benchmark file."""
  with open(SPEED_TEXT) as f:
    text = f.read()
  names = sorted(n for n in os.listdir(BENCHMARKS) if n.endswith('.json'))
  return report.speed_page(text, {n: _read_json(os.path.join(BENCHMARKS, n)) for n in names})


README = os.path.join(os.path.dirname(HERE), 'README.md')
METHODS_MARKERS = ('<!-- methods -->', '<!-- /methods -->')


def with_methods_table(readme: str) -> str:
  """`readme` with the text between the methods markers replaced by the registry's table."""
  start, end = METHODS_MARKERS
  head, rest = readme.split(start, 1)
  _, tail = rest.split(end, 1)
  return f'{head}{start}\n{report.methods_table(jaxunlearn.methods.methods())}\n{end}{tail}'


def run_comparisons() -> None:
  """Runs the theory figures and every comparison without a results file; publishes them."""
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


def main(argv):
  del argv
  if not _ONLY_RENDER.value:
    run_comparisons()
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
