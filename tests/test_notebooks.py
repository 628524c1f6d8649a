"""The Colab notebooks: stored clean, built on the template, and running headless on a CPU.

The template of every notebook in colab/: a markdown title with an "Open in Colab" badge, an
install cell (the checkout's code when run from colab/, else `pip install git+URL`), a cell that
prints the runtime's devices, one cell tagged `parameters` holding only literal assignments, then
the work. The repository URL is setup.cfg's `url`: a fork changes it there, and the tests below
name every notebook line that still points elsewhere.
"""

import ast
import configparser
import glob
import os
import re
import sys

import jax
import nbclient
import nbformat
import pytest

from jaxunlearn import theory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLAB = os.path.join(REPO, 'colab')
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(COLAB, '*.ipynb')))


def _read(name):
  return nbformat.read(os.path.join(COLAB, name), as_version=4)


def _repository_url() -> str:
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, 'setup.cfg'))
  return config['metadata']['url']


def _code_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == 'code']


def _parameters_cell(nb):
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, 'exactly one cell must be tagged "parameters"'
  return cells[0]


def _parameters(nb) -> dict:
  """The values of the parameters cell (literal assignments only, see the template test)."""
  return {
    node.targets[0].id: ast.literal_eval(node.value)
    for node in ast.parse(_parameters_cell(nb).source).body
  }


def _with_parameters(nb, values: dict):
  """`nb` with the named assignments of its parameters cell set to `values`, as a reader would
  change them (papermill's injection, in place)."""
  cell = _parameters_cell(nb)
  names = {node.targets[0].id for node in ast.parse(cell.source).body}
  assert set(values) <= names, f'not in the parameters cell: {set(values) - names}'
  lines = []
  for line in cell.source.splitlines():
    name = line.split('=', 1)[0].strip()
    lines.append(f'{name} = {values[name]!r}' if name in values else line)
  cell.source = '\n'.join(lines)
  return nb


def _execute(name, tmp_path, monkeypatch, append=(), parameters=None):
  """Runs every cell (and `append`ed code) as Jupyter would, started in colab/, with the
  parameters cell's values overridden by `parameters`.

  Raises nbclient's CellExecutionError on a failing cell.
  """
  monkeypatch.setenv('TMPDIR', str(tmp_path))  # the notebook's workdir goes under tmp_path
  # The kernel sees one CPU device, as on a Colab CPU runtime. With the suite's 8 forced host
  # devices on 2 busy cores, XLA's CPU all-reduce can miss its 40 s rendezvous and abort. Only
  # the kernel's environment loses the flag: this process keeps its devices.
  kernel_env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  nb = _with_parameters(_read(name), parameters or {})
  nb.cells += [nbformat.v4.new_code_cell(source) for source in append]
  nbclient.NotebookClient(
    nb, timeout=300, kernel_name='python3', resources={'metadata': {'path': COLAB}}
  ).execute(env=kernel_env)
  return nb


def _text(cell) -> str:
  return ''.join(out.get('text', '') for out in cell.outputs)


def _images(nb):
  return [
    out for cell in _code_cells(nb) for out in cell.outputs if 'image/png' in out.get('data', {})
  ]


def test_every_notebook_is_tested():
  assert NOTEBOOKS == [
    'linreg_theory.ipynb',
    'many_models.ipynb',
    'quickstart.ipynb',
    'rfa_lora.ipynb',
    'sfron.ipynb',
  ], 'a notebook was added or removed in colab/: give each one a test that runs it below'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_stored_without_outputs(name):
  nb = _read(name)
  assert nb.metadata.kernelspec.name == 'python3'
  for cell in _code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, (
      f'colab/{name} is stored with outputs: clear them (cell {cell.source[:40]!r})'
    )


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_follows_the_template_and_setup_cfg_url(name):
  nb = _read(name)
  url = _repository_url()
  owner_repo = url.removeprefix('https://github.com/')
  title, install, devices = nb.cells[:3]
  badge = f'https://colab.research.google.com/github/{owner_repo}/blob/main/colab/{name}'
  command = f'%pip install -q git+{url}'
  assert title.cell_type == 'markdown' and title.source.startswith('# ')
  assert badge in title.source, (
    f"colab/{name}: the first cell's Open in Colab badge must link {badge} (setup.cfg url)"
  )
  assert install.cell_type == 'code' and 'import jaxunlearn' in install.source
  assert command in install.source, (
    f'colab/{name}: the install cell (second cell) must run `{command}` (setup.cfg url)'
  )
  # Nothing else names a repository: a fork updates setup.cfg and the two lines above.
  text = '\n'.join(cell.source for cell in nb.cells)
  for other in set(re.findall(r'github(?:\.com)?/([\w.-]+/[\w.-]+?)(?:\.git)?[/)\s]', text)):
    assert other == owner_repo, f'colab/{name} names the repository {other}, setup.cfg {url}'
  assert devices.cell_type == 'code' and 'jax.devices()' in devices.source
  # One parameters cell, right after the devices and a markdown cell, with only literal
  # assignments: readers change values there, and tests read them.
  parameters = _parameters_cell(nb)
  assert nb.cells.index(parameters) == 4 and nb.cells[3].cell_type == 'markdown'
  for node in ast.parse(parameters.source).body:
    assert isinstance(node, ast.Assign) and len(node.targets) == 1
    ast.literal_eval(node.value)


def _table_rows(markdown: str) -> dict[str, dict[str, str]]:
  """Parses `report.markdown_table` output into {method: {column: cell}}."""
  lines = [line.strip().strip('|').split('|') for line in markdown.strip().splitlines()]
  header = [c.strip() for c in lines[0]]
  return {
    cells[0].strip(): dict(zip(header[1:], (c.strip() for c in cells[1:]))) for cells in lines[2:]
  }


def _check_template_outputs(nb):
  """The checkout's code ran (not an installed copy), on a CPU runtime."""
  install, devices = _code_cells(nb)[:2]
  assert _text(install).strip() == f'jaxunlearn from {os.path.join(REPO, "jaxunlearn")}'
  assert _text(devices).startswith('CPU runtime: ')


def test_quickstart_runs_and_shows_table_and_plot(data_dir, tmp_path, monkeypatch):
  del data_dir  # sets JAXUNLEARN_DATA_DIR, which the kernel inherits
  # Appended here only: which interpreter the 'python3' kernel resolved to.
  nb = _execute(
    'quickstart.ipynb', tmp_path, monkeypatch, append=['import sys\nprint(sys.executable)']
  )
  _check_template_outputs(nb)
  cells = _code_cells(nb)
  outputs = [out for cell in cells for out in cell.outputs]
  assert cells[-1].outputs[0].text.strip() == sys.executable

  tables = [out.data['text/markdown'] for out in outputs if 'text/markdown' in out.get('data', {})]
  assert len(tables) == 2
  rows = _table_rows(tables[0])
  assert list(rows) == ['Original', 'Retrain', 'ft', 'salun']
  # The user's own model and checkpoint: read, not trained, and every row has FD_r.
  yours = _table_rows(tables[1].split('\n\n')[0])
  assert list(yours) == ['Original', 'Retrain', 'ft', 'rfa_lora']
  assert yours['Original']['RTE_s'] == '0.00'
  assert all(row['FD_r'] not in ('-', 'diverged') for row in yours.values())
  assert 'The Original is read from' in tables[1]
  # Retrain never saw a 3: it gets no training or test 3 right, and is its own reference.
  assert rows['Retrain']['UA'] == '100.00'
  assert rows['Retrain']['TA_forget'] == '0.00'
  assert rows['Retrain']['AvgGap'] == '0.00' and rows['Retrain']['KL'] == '0.000'
  # The original model learned the 3s; both methods end closer to Retrain than it is.
  assert float(rows['Original']['UA']) < 50
  for method in ('ft', 'salun'):
    assert float(rows[method]['AvgGap']) < float(rows['Original']['AvgGap'])
  assert len(_images(nb)) == 1


def test_linreg_theory_runs_and_shows_the_claims_and_figures(tmp_path, monkeypatch):
  nb = _execute('linreg_theory.ipynb', tmp_path, monkeypatch)
  _check_template_outputs(nb)
  params = _parameters(nb)

  # The one-task cell shows the library's closed forms: FT stays at w_o, golden's unlearning
  # loss is (1/n_f) ||y_f||^2, both remedies equal golden (distinct features).
  claims = next(_text(c) for c in _code_cells(nb) if 'FT moves no weight' in _text(c))
  task = theory.make_task(
    jax.random.key(params['seed']),
    theory.TaskSpec(d=params['d'], n_r=params['n_r'], n_f=params['n_f']),
  )
  golden = float(theory.unlearning_loss(theory.golden(task), task))
  assert golden > 0.1
  assert f'unlearning loss: FT 0.0000, golden {golden:.4f}' in claims
  assert f'(1/n_f) ||y_f||^2 = {golden:.4f}' in claims
  for line in claims.splitlines():
    if 'max |' in line:
      assert float(line.rsplit('= ', 1)[1]) < 1e-5, line

  table = next(_text(c) for c in _code_cells(nb) if 'gap to golden against overlap' in _text(c))
  assert f'mean over {params["seeds"]} seeds' in table
  overlap_rows = table.split('gap to golden against overlap')[1].strip().splitlines()[2:]
  assert len(overlap_rows) == params['overlap_points']

  # The three figures, inline, one per figure cell; then the saved files.
  figure_cells = [c for c in _code_cells(nb) if 'theory.plot_' in c.source]
  assert len(figure_cells) == 3
  for cell in figure_cells:
    assert [o for o in cell.outputs if 'image/png' in o.get('data', {})], cell.source
  assert len(_images(nb)) == 3
  saved = _text(_code_cells(nb)[-1]).split()
  assert [os.path.basename(p) for p in saved] == [
    'loss_curves.png',
    'overlap_sweep.png',
    'alpha_sweep.png',
    'results.json',
  ]
  for path in saved:
    assert path.startswith(str(tmp_path)) and os.path.getsize(path) > 0


def test_quickstart_config_to_table_in_six_lines():
  nb = nbformat.read(os.path.join(COLAB, 'quickstart.ipynb'), as_version=4)
  study_cell = next(c for c in _code_cells(nb) if 'jaxunlearn.Study(' in c.source)
  assert len([line for line in study_cell.source.splitlines() if line.strip()]) <= 6


def _markdown_tables(nb):
  return [
    out.data['text/markdown']
    for cell in _code_cells(nb)
    for out in cell.outputs
    if 'text/markdown' in out.get('data', {})
  ]


def test_sfron_notebook_shows_mask_weights_and_ablation(data_dir, tmp_path, monkeypatch):
  del data_dir
  nb = _execute('sfron.ipynb', tmp_path, monkeypatch, parameters={'iterations': 20})
  _check_template_outputs(nb)
  text = '\n'.join(_text(c) for c in _code_cells(nb))
  assert re.search(r'convs/0/kernel\s+\d+ weights, +\d+\.\d% salient', text)
  assert 'of D_f weigh more than the uniform 1' in text
  rows = _table_rows(_markdown_tables(nb)[-1])
  assert list(rows)[:2] == ['Original', 'Retrain'] and 'sfron-SFR' in rows and 'sfron-none' in rows
  assert len(_images(nb)) == 3  # mask density, weights, the ablation picture


def test_rfa_lora_notebook_shows_adapters_gamma_and_distances(data_dir, tmp_path, monkeypatch):
  del data_dir
  nb = _execute('rfa_lora.ipynb', tmp_path, monkeypatch, parameters={'gammas': [0.3, 3.0]})
  _check_template_outputs(nb)
  text = '\n'.join(_text(c) for c in _code_cells(nb))
  assert 'layers with a branch: convs.0, convs.1, dense, head' in text
  # The diagnostic: the mean softmax puts the forgotten class last, so it warns only once the
  # output target is switched to the mean logits (if at all).
  assert 'defaults: output_target=probabilities' in text
  assert 'output (probabilities) class 3: 10' in text and 'output (logits) class 3:' in text
  share = float(re.search(r'\(([\d.]+)% of all weights\)', text).group(1))
  assert 0 < share < 20
  rows = _table_rows(_markdown_tables(nb)[-1])
  assert {'ft', 'rfa_lora'} <= set(rows)
  # RFA-LoRA forgets much of the class the Original knew.
  assert float(rows['rfa_lora']['UA']) > float(rows['Original']['UA']) + 10
  assert len(_images(nb)) == 2  # the gamma figure, the distances per layer


def test_many_models_notebook_shows_scores_and_epsilons(data_dir, tmp_path, monkeypatch):
  del data_dir
  nb = _execute(
    'many_models.ipynb', tmp_path, monkeypatch, parameters={'methods': 'ft', 'relearn_steps': 5}
  )
  _check_template_outputs(nb)
  rows = _table_rows(_markdown_tables(nb)[0])
  assert list(rows) == ['Retrain', 'Control', 'Original', 'ft']
  for name in ('Control', 'Original', 'ft'):
    point, low, high = map(float, re.findall(r'[\d.]+', rows[name]['F']))
    assert 0.0 <= low <= point <= high <= 1.0
  assert len(_images(nb)) == 1
  text = '\n'.join(_text(c) for c in _code_cells(nb))
  assert 'median epsilon' in text and 'scoring examples' in text
