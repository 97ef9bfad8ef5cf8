"""Loss plots (jaxgpt/plot.py, python -m jaxgpt.plot): loss and bits-per-byte curves of one or more runs."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
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


def plot(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        run_cli(plot_main, argv)
        code = 0
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    return code, out, err


def with_metrics(tmp_path, name: str, text: str):
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.jsonl").write_text(text)
    return run


def test_a_run_without_evaluations_is_refused_and_one_evaluation_is_drawn(run_dir, tmp_path, capsys):
    empty = with_metrics(tmp_path, "empty", "")
    assert plot([str(empty)], capsys) == (2, "", "error: run empty has no evaluations in its metrics yet: nothing to "
                                                 "plot\n")
    assert not (empty / "loss.png").exists()
    first = (run_dir / "metrics.jsonl").read_text().splitlines()[0]
    one = with_metrics(tmp_path, "one", first + "\n")
    assert plot([str(one)], capsys) == (0, f"wrote {one / 'loss.png'}\n", "")
    import matplotlib.image

    pixels = matplotlib.image.imread(one / "loss.png")[..., :3]
    blue = np.all(np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.02, axis=-1)  # the val curve's colour
    assert blue.sum() > 20  # the point is drawn (a line through one point would draw nothing)


@pytest.mark.parametrize("output, message", [
    ("NAME", "--output 'NAME' must end in an image type such as .png, .svg or .pdf"),
    ("NAME.txt", "--output 'NAME.txt' must end in an image type such as .png, .svg or .pdf"),
    ("DIR", "--output 'DIR' is a directory; give a file in it, such as DIR/loss.png"),
])
def test_an_output_that_is_not_an_image_file_is_refused(run_dir, tmp_path, capsys, output, message):
    (tmp_path / "DIR").mkdir()
    path = str(tmp_path / output)
    code, _, err = plot([str(run_dir), f"--output={path}"], capsys)
    assert code == 2 and err == f"error: {message.replace(output, path, 1).replace('DIR/', path + '/')}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DIR"]


@pytest.mark.parametrize("line", ['{"step": 0}', "[1, 2]", '"text"', '{"step": "0", "train_loss": 1, "val_loss": 1}'])
def test_a_json_line_that_is_not_a_record_is_one_line(tmp_path, capsys, line):
    run = with_metrics(tmp_path, "run", line + "\n" + '{"step": 5, "train_loss": 1.0, "val_loss": 1.0}\n')
    code, _, err = plot([str(run)], capsys)
    assert code == 1 and err == (f"error: {run / 'metrics.jsonl'} line 1 is not a metrics record; the file is "
                                 "damaged (resume the run to rewrite it from its checkpoints)\n")


def test_a_run_of_zero_steps_without_an_evaluation_writes_no_plot(tmp_path, shakespeare_text):
    text = tmp_path / "small.txt"
    text.write_text(shakespeare_text[:20_000], encoding="utf-8")
    config = dataclasses.replace(load_config("tiny"), data_path=str(text), out_dir=str(tmp_path / "run"),
                                 max_iters=0, eval_at_start=False, progress=False, sample_chars=0)
    lines = []
    train(config, log=lines.append)
    assert "no evaluation was made: no loss plot" in lines and not (tmp_path / "run" / "loss.png").exists()


@pytest.mark.parametrize("plot", [True, False])
def test_plot_false_writes_no_loss_plot(tmp_path, shakespeare_text, plot):
    text = tmp_path / "small.txt"
    text.write_text(shakespeare_text[:20_000], encoding="utf-8")
    config = dataclasses.replace(load_config("tiny"), data_path=str(text), out_dir=str(tmp_path / "run"),
                                 max_iters=2, eval_interval=2, progress=False, sample_chars=0, plot=plot)
    train(config, log=lambda _: None)
    assert (tmp_path / "run" / "loss.png").exists() == plot
