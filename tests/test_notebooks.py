"""The Colab quickstart runs top to bottom on a CPU and shows the comparison table and the plot."""

import os
import sys

import nbclient
import nbformat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, 'colab', 'quickstart.ipynb')


def _code_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == 'code']


def _table_rows(markdown: str) -> dict[str, dict[str, str]]:
  """Parses `report.markdown_table` output into {method: {column: cell}}."""
  lines = [line.strip().strip('|').split('|') for line in markdown.strip().splitlines()]
  header = [c.strip() for c in lines[0]]
  return {cells[0].strip(): dict(zip(header[1:], (c.strip() for c in cells[1:])))
          for cells in lines[2:]}


def test_quickstart_is_stored_without_outputs():
  nb = nbformat.read(QUICKSTART, as_version=4)
  assert nb.metadata.kernelspec.name == 'python3'
  for cell in _code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_quickstart_runs_and_shows_table_and_plot(data_dir, tmp_path, monkeypatch):
  del data_dir   # sets JAXUNLEARN_DATA_DIR, which the kernel inherits
  monkeypatch.setenv('TMPDIR', str(tmp_path))   # the notebook's workdir goes under tmp_path
  nb = nbformat.read(QUICKSTART, as_version=4)
  # Added here only: which interpreter the 'python3' kernel resolved to.
  nb.cells.append(nbformat.v4.new_code_cell('import sys\nprint(sys.executable)'))
  # Started in the notebook's folder, as Jupyter does; raises CellExecutionError on a failing cell.
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': os.path.dirname(QUICKSTART)}}).execute()
  cells = _code_cells(nb)
  outputs = [out for cell in cells for out in cell.outputs]
  assert cells[-1].outputs[0].text.strip() == sys.executable

  tables = [out.data['text/markdown'] for out in outputs if 'text/markdown' in out.get('data', {})]
  assert len(tables) == 1
  rows = _table_rows(tables[0])
  assert list(rows) == ['Original', 'Retrain', 'ft', 'salun']
  # Retrain never saw a 3: it gets no training or test 3 right, and is its own reference.
  assert rows['Retrain']['UA'] == '100.00'
  assert rows['Retrain']['TA_forget'] == '0.00'
  assert rows['Retrain']['AvgGap'] == '0.00' and rows['Retrain']['KL'] == '0.000'
  # The original model learned the 3s; both methods end closer to Retrain than it is.
  assert float(rows['Original']['UA']) < 50
  for method in ('ft', 'salun'):
    assert float(rows[method]['AvgGap']) < float(rows['Original']['AvgGap']), rows

  plots = [out for out in outputs if 'image/png' in out.get('data', {})]
  assert len(plots) == 1


def test_quickstart_config_to_table_in_six_lines():
  nb = nbformat.read(QUICKSTART, as_version=4)
  study_cell = next(c for c in _code_cells(nb) if 'jaxunlearn.Study(' in c.source)
  assert len([line for line in study_cell.source.splitlines() if line.strip()]) <= 6
