"""Loss plots (jaxgpt/plot.py, python -m jaxgpt.plot): loss and bits-per-byte curves of one or more runs."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from jaxgpt.cli import run_cli
from jaxgpt.core.config import load_config
from jaxgpt.plot import main as plot_main
from jaxgpt.run.training import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shakespeare_text):
    folder = tmp_path_factory.mktemp("plot")
    text = folder / "small.txt"
    text.write_text(shakespeare_text[:20_000], encoding="utf-8")
    config = dataclasses.replace(load_config("tiny"), data_path=str(text), out_dir=str(folder / "run"),
                                 max_iters=10, eval_interval=5, eval_iters=2, progress=False, sample_chars=0)
    train(config, log=lambda _: None)
    return folder / "run"


def test_every_evaluation_reports_val_bpb(run_dir):
    """Tiny Shakespeare is ASCII: one byte per character token, so bits per byte are the loss over ln 2."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 5, 10]
    for record in records:
        assert record["val_bpb"] == pytest.approx(record["val_loss"] / math.log(2), rel=1e-5)


def test_plot_draws_bits_per_byte_of_several_runs(run_dir, tmp_path, capsys):
    output = tmp_path / "bpb.png"
    run_cli(plot_main, [str(run_dir), str(run_dir), f"--output={output}", "--metric=bpb"])
    assert capsys.readouterr().out == f"wrote {output}\n"
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_bpb_refuses_a_run_without_it_in_one_line(run_dir, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (old / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "val_bpb"}) + "\n"
                                               for r in records))
    with pytest.raises(SystemExit) as exited:
        run_cli(plot_main, [str(old), f"--output={tmp_path / 'x.png'}", "--metric=bpb"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("error: run old has no val_bpb in its metrics (trained by an older jaxgpt); "
                                       "plot it with --metric=loss\n")
    assert not (tmp_path / "x.png").exists()
