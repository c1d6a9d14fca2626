"""The Colab notebooks run top to bottom on the tiny config (nbclient), failing on any cell error."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["quickstart.ipynb", "hourglass.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("RQSID_NOTEBOOK_CONFIG", "configs/tiny.py")
    monkeypatch.setenv("RQSID_NOTEBOOK_WORKDIR", str(tmp_path / "wd"))
    nb = nbformat.read(os.path.join(ROOT, "colab", name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
