"""The notebooks: committed without outputs, and executed top to bottom in smoke mode so they never rot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["colab_tpu.ipynb", "gpt_from_scratch.ipynb"]
CELL_TIMEOUT_S = 600
KERNEL_NAME = "jaxgpt-test"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / "notebooks" / name, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    notebook = read(name)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, f"outputs in cell {cell.source[:60]!r}"
    assert "widgets" not in notebook.metadata


@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch) -> str:
    """A kernel spec that runs this interpreter (so the notebook sees the jaxgpt under test), found first."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "jaxgpt tests", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return KERNEL_NAME


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, this_python_kernel, shakespeare_path, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXGPT_SMOKE", "1")
    monkeypatch.setenv("JAXGPT_DATA", str(shakespeare_path))
    notebook = read(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=this_python_kernel,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert errors == []
    stdout = "".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.outputs if out.output_type == "stream")
    assert "smoke mode: True" in stdout  # the kernel saw the environment
    assert list(workdir.iterdir()) == []  # smoke runs write only to temporary directories
