"""experiments/RESULTS.md and docs/speed.md are exactly what reproduce_results renders from the
committed results and benchmark files."""

import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(REPO, 'experiments')


def test_results_page_matches_the_committed_results(tmp_path):
  out = tmp_path / 'RESULTS.md'
  figures = tmp_path / 'figures'
  # The pictures go to tmp_path and the README stays: a test never rewrites committed files.
  subprocess.run(
    [
      sys.executable,
      '-m',
      'experiments.reproduce_results',
      '--only_render',
      '--nowrite_readme',
      f'--out={out}',
      f'--speed_out={tmp_path / "speed.md"}',
      f'--figures_dir={figures}',
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  page = out.read_text()
  with open(os.path.join(EXPERIMENTS, 'RESULTS.md')) as f:
    assert page == f.read(), 'RESULTS.md is stale: rerun reproduce_results --only_render'
  with open(os.path.join(REPO, 'docs', 'speed.md')) as f:
    assert (tmp_path / 'speed.md').read_text() == f.read(), (
      'docs/speed.md is stale: rerun reproduce_results --only_render'
    )
  assert 'Not measured yet' not in page
  for table in (
    'All methods: forget random:0.1',
    'All methods: forget class:3',
    'ablation (S = saliency mask, F = adaptive weights, R = R-on): forget class:3',
    'Discriminative regularisation (Ding, Xu, Ji v1 protocol): forget class:9',
  ):
    assert table in page
  # One picture per all-methods table, drawn by --only_render, committed where the page links it.
  images = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', page)
  drawn = sorted(
    os.path.relpath(os.path.join(root, name), figures)
    for root, _, names in os.walk(figures)
    for name in names
  )
  assert drawn == [
    'mnist5k-cnn/class-3-split0/all_methods.png',
    'mnist5k-cnn/random-0.1-split0/all_methods.png',
  ]
  for name in drawn:
    assert f'results/{name}' in images
  for image in images:
    assert os.path.exists(os.path.join(EXPERIMENTS, image)), f'{image} is not committed'


def test_readme_methods_table_comes_from_the_registry():
  import jaxunlearn
  from experiments import reproduce_results

  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  assert reproduce_results.with_methods_table(readme) == readme, (
    'the README methods table is stale: rerun reproduce_results --only_render'
  )
  for name in jaxunlearn.methods.names():
    assert f'| `{name}` |' in readme


def test_tuning_table_marks_each_methods_chosen_combination(tmp_path):
  from experiments import reproduce_results

  path = tmp_path / 'tuning.json'
  trials = [
    {'values': {'optimizer.lr': lr, 'gamma': g}, 'AvgGap': gap}
    for lr, g, gap in ((0.003, 1.0, 2.5), (0.003, 3.0, 1.25), (0.01, 1.0, 4.0))
  ]
  path.write_text(
    json.dumps(
      {
        'tune_split_seed': 1,
        'multipliers': ['0.3', '1', '3'],
        'methods': {
          'rfa_lora': {
            'knobs': ['optimizer.lr', 'gamma'],
            'chosen': trials[1]['values'],
            'trials': trials,
            'skipped': [],
            'defaults': {'optimizer.lr': 0.003, 'gamma': 1.0},
          }
        },
      }
    )
  )
  lines = reproduce_results.tuning_table(str(path))
  assert lines[0].startswith('Tuning on split seed 1')
  assert lines[2] == '| Method | Knobs | Runs | Trials |'
  assert lines[4] == (
    '| rfa_lora | `optimizer.lr`, `gamma` | 3 | 0.003, 1: 2.50; **0.003, 3: 1.25**; 0.01, 1: 4.00 |'
  )


def test_tuning_table_of_the_rule_shows_runs_edges_and_seeds_per_trial(tmp_path):
  from experiments import reproduce_results

  path = tmp_path / 'tuning.json'
  trials = [
    {'values': {'optimizer.lr': 0.01}, 'AvgGap': 1.5, 'per_seed': {'3': 1.5}},
    {'values': {'optimizer.lr': 0.03}, 'AvgGap': 0.75, 'per_seed': {'3': 0.5, '4': 1.0}},
  ]
  method = {
    'knobs': ['optimizer.lr'],
    'chosen': {'optimizer.lr': 0.03},
    'trials': trials,
    'budget': {'runs': 3, 'grid_runs': 2, 'extension_runs': 1},
    'edges': {'optimizer.lr': 'inside'},
  }
  rule = {
    'rule': 'equal grids',
    'tune_split_seed': 1,
    'tune_seeds': [3, 4],
    'settings_per_method': 9,
    'multipliers': ['0.3', '1', '3'],
  }
  path.write_text(json.dumps({**rule, 'methods': {'ga': method}}))
  lines = reproduce_results.tuning_table(str(path))
  assert 'each run on seed 3, the best third also on seed 4' in lines[0]
  assert lines[2] == '| Method | Knobs | Runs | Edges | Trials |'
  assert lines[4] == (
    '| ga | `optimizer.lr` | 3 (2 grid + 1 extension) | optimizer.lr: inside '
    '| 0.01: 1.50; **0.03: 0.75 x2** |'
  )
  # A record of equal runs per method says so, and counts the midpoints' runs apart.
  method['budget'] = {'runs': 5, 'grid_runs': 2, 'extension_runs': 1, 'midpoint_runs': 2}
  path.write_text(json.dumps({**rule, 'runs_per_method': 5, 'methods': {'ga': method}}))
  lines = reproduce_results.tuning_table(str(path))
  assert 'Every method makes 5 runs' in lines[0]
  assert '| 5 (2 grid + 1 extension + 2 midpoint) |' in lines[4]
