"""experiments/RESULTS.md is exactly what reproduce_results renders from the committed results."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_results_page_matches_the_committed_results(tmp_path):
  out = tmp_path / 'RESULTS.md'
  subprocess.run([sys.executable, '-m', 'experiments.reproduce_results', '--only_render',
                  '--nowrite_readme', f'--out={out}'], cwd=REPO, check=True, capture_output=True)
  page = out.read_text()
  with open(os.path.join(REPO, 'experiments', 'RESULTS.md')) as f:
    assert page == f.read(), 'RESULTS.md is stale: rerun reproduce_results --only_render'
  assert 'Not measured yet' not in page
  for table in ('All methods: forget random:0.1', 'All methods: forget class:3',
                'ablation (S = saliency mask, F = adaptive weights, R = R-on): forget class:3',
                'Discriminative regularisation (Ding, Xu, Ji v1 protocol): forget class:9'):
    assert table in page


def test_readme_methods_table_comes_from_the_registry():
  from experiments import reproduce_results
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  assert reproduce_results.with_methods_table(readme) == readme, (
      'the README methods table is stale: rerun reproduce_results --only_render')
  for name in __import__('jaxunlearn').methods.names():
    assert f'| `{name}` |' in readme
