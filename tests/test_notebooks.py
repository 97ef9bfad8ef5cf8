"""The notebooks: committed without outputs, and executed top to bottom in smoke mode so they never rot."""

from __future__ import annotations

import json
import re
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


COLAB_TPU = "tpu-v5e-1"  # what Colab's TPU runtime gives (its notebook says so)


def test_the_colab_notebooks_programs_compile_for_colabs_tpu(shakespeare_path, monkeypatch):
    """The notebook's own configuration cell (run here with one device, as on a 1-chip TPU runtime), compiled for
    the Colab TPU it names: its train step, evaluation and its 1,000-token sample fit a chip."""
    import jax

    from jaxgpt.run.compile_check import check_sample, check_train, format_bytes
    from jaxgpt.system.targets import find_target, missing_library

    target = find_target(COLAB_TPU)
    if missing_library(target):
        pytest.skip(missing_library(target))
    notebook = read("colab_tpu.ipynb")
    assert f"compiled for a Colab **{COLAB_TPU}**" in notebook.cells[5].source
    monkeypatch.delenv("JAXGPT_SMOKE", raising=False)
    monkeypatch.setenv("JAXGPT_DATA", str(shakespeare_path))
    namespace = {"jax": jax}
    for cell in (notebook.cells[1], notebook.cells[6]):  # the settings, then the config
        exec(cell.source, namespace)  # noqa: S102 (our own notebook)
    config = namespace["config"]
    assert (config.batch_size, config.fsdp, config.model.n_layer) == (64, 1, 6)
    train = check_train(config, target, log=lambda _: None)
    assert train.fit_problem() is None
    assert "n_chars = 200 if SMOKE else 1000" in notebook.cells[11].source  # its sample: 1,000 characters
    sampler = check_sample(train_model(config), target, dtype="float32", prompt_len=1, num_samples=1,
                           max_new_tokens=1000, cache="recompute")
    assert sampler.fit_problem() is None
    # the figure the notebook states, to its 2 digits (libtpu versions differ in the last: 1.75 GiB with 0.0.52,
    # 1.77 GiB with 0.0.42.1, the one jax[tpu] pins)
    stated = float(re.search(r"needs about ([\d.]+) GiB of its 16 GiB", notebook.cells[5].source)[1])
    assert abs(train.train_step.peak_bytes / 2**30 - stated) <= 0.05, format_bytes(train.train_step.peak_bytes)


def train_model(config):
    """The model the notebook samples with: the run's, resolved for a TPU (bfloat16 matmuls, float32 weights)."""
    return config.for_vocab(65, backend="tpu").model
