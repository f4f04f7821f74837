"""Every notebook runs top to bottom (small settings) and is stored without outputs."""

import glob
import os

import nbformat
import pytest

nbclient = pytest.importorskip('nbclient')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, 'notebooks', '*.ipynb')))


def test_the_three_notebooks_exist():
  names = [os.path.basename(n) for n in NOTEBOOKS]
  assert names == ['01_compose_an_architecture.ipynb', '02_sparse_decoding.ipynb',
                   '03_gin_experiments.ipynb']


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_stored_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, cell.source[:80]


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
  monkeypatch.setenv('SPARSE_TRAX_NOTEBOOK_SMALL', '1')
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                                   resources={'metadata': {'path': os.path.dirname(path)}})
  client.execute()   # raises CellExecutionError, naming the cell, on any error
  text = '\n'.join(output.get('text', '') for cell in notebook.cells
                   for output in cell.get('outputs', []))
  assert 'Traceback' not in text
