"""Experiment trackers (`--log_to`): TensorBoard events read back with TensorBoard's own reader, W&B's offline run
files, `--resume` continuing the W&B run, a tracker failing mid-run, and the one-line errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from jaxgpt.cli import parse_train_args
from jaxgpt.core.config import load_config
from jaxgpt.run import trackers
from jaxgpt.run.training import train
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError

pytest.importorskip("tensorboardX")
pytest.importorskip("wandb")
pytest.importorskip("tensorboard")


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch, tmp_path):
    """W&B without an account or a network: offline, its settings kept inside the test's directory."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def config(tmp_path, data_path, **overrides):
    settings = {"data_path": str(data_path), "out_dir": str(tmp_path / "run"), "progress": False, "sample_chars": 0,
                "max_iters": 4, "eval_interval": 2, "eval_iters": 1, "steps_per_call": 1}
    return dataclasses.replace(load_config("tiny"), **{**settings, **overrides})


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_records(path: Path) -> list:
    """The protobuf records of a W&B run file: a 7-byte header, then LevelDB's log format (32 KiB blocks of
    records with a 7-byte header: crc, length, type; FULL = 1, FIRST, MIDDLE, LAST)."""
    from wandb.proto import wandb_internal_pb2

    data, position, records, pending = path.read_bytes(), 7, [], b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def wandb_history(run_file: Path) -> list[dict]:
    """The logged rows, each with its "_step"."""
    return [{**{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item},
             "_step": record.history.step.num}
            for record in wandb_records(run_file) if record.WhichOneof("record_type") == "history"]


def test_every_metric_goes_to_tensorboard_and_wandb(tmp_path, small_text_file):
    result = train(config(tmp_path, small_text_file, log_to="tensorboard,wandb"), log=lambda _: None)
    run = RunDir(tmp_path / "run")
    metrics = run.read_metrics()
    assert [r["step"] for r in metrics] == [0, 2, 4] and result.history == metrics

    scalars = tensorboard_scalars(run.tensorboard)
    for key in ("train_loss", "val_loss", "val_bpb", "learning_rate", "grad_norm", "update_ratio/blocks_0"):
        expected = [(r["step"], r[key]) for r in metrics if r.get(key) is not None]
        assert [(step, pytest.approx(value, rel=1e-6)) for step, value in expected] == scalars[key], key

    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    (run_file,) = run.wandb.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    history = wandb_history(run_file)
    assert [(row["_step"], row["val_loss"]) for row in history] == [(r["step"], r["val_loss"]) for r in metrics]
    assert history[-1]["grad_norm"] == pytest.approx(metrics[-1]["grad_norm"])
    (run_record,) = [r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"]
    assert run_record.run_id == run_id and run_record.project == "jaxgpt"
    config_items = {item.key or "/".join(item.nested_key): item.value_json for item in run_record.config.update}
    assert json.loads(config_items["max_iters"]) == 4


def test_resume_continues_the_same_wandb_run(tmp_path, small_text_file):
    first = config(tmp_path, small_text_file, log_to="wandb", max_iters=2, checkpoint_interval=2)
    train(first, log=lambda _: None)
    run = RunDir(tmp_path / "run")
    run_id = (tmp_path / "run" / "wandb_id.txt").read_text().strip()
    train(dataclasses.replace(first, max_iters=4, resume=True), log=lambda _: None)
    assert (tmp_path / "run" / "wandb_id.txt").read_text().strip() == run_id
    run_files = sorted(run.wandb.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(run_files) == 2  # two processes, one W&B run: `wandb sync` uploads both into it
    assert [row["_step"] for row in wandb_history(run_files[-1])] == [4]


def test_a_tracker_that_fails_mid_run_is_dropped_and_training_goes_on(tmp_path, small_text_file, monkeypatch):
    calls = []

    def full_disk(self, record):
        calls.append(record["step"])
        if len(calls) > 1:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(trackers.TensorBoard, "log", full_disk)
    lines = []
    train(config(tmp_path, small_text_file, log_to="tensorboard"), log=lines.append)
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == ["warning: the tensorboard tracker failed to log ([Errno 28] No space left on device); "
                        "training goes on without it (metrics.jsonl has every evaluation)"]
    assert calls == [0, 2]  # dropped after its failure
    assert [r["step"] for r in RunDir(tmp_path / "run").read_metrics()] == [0, 2, 4]
    assert "step 4: train loss" in lines[-1]


def test_a_tracker_that_cannot_start_does_not_stop_the_run(tmp_path, small_text_file, monkeypatch):
    def unreachable(*_):
        raise ConnectionError("api.wandb.ai unreachable\nmore detail")

    monkeypatch.setitem(trackers.KINDS, "wandb", unreachable)
    lines = []
    train(config(tmp_path, small_text_file, log_to="wandb"), log=lines.append)
    assert ("warning: the wandb tracker failed to start (api.wandb.ai unreachable); training goes on without it "
            "(metrics.jsonl has every evaluation)") in lines
    assert [r["step"] for r in RunDir(tmp_path / "run").read_metrics()] == [0, 2, 4]


def test_a_missing_tracker_library_is_one_line_before_the_run(tmp_path, small_text_file, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UsageError, match=r"^--log_to=wandb needs the wandb package: pip install 'jaxgpt\[track\]'$"):
        train(config(tmp_path, small_text_file, log_to="tensorboard,wandb"), log=lambda _: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["tensorbord", "wandb,wandb", "tensorboard,", ",wandb"])
def test_an_unknown_tracker_is_one_line(value):
    with pytest.raises(UsageError, match=r"^log_to must be empty or a comma-separated list of tensorboard and wandb"):
        parse_train_args([f"--log_to={value}"])


def test_the_command_line_logs_to_tensorboard(tmp_path, small_text_file):
    out_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "jaxgpt.train", "--config=tiny", "--max_iters=2", "--eval_interval=2",
            "--eval_iters=1", "--sample_chars=0", "--progress=false", f"--data_path={small_text_file}",
            f"--out_dir={out_dir}", "--log_to=tensorboard"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [step for step, _ in tensorboard_scalars(out_dir / "tensorboard")["val_loss"]] == [0, 2]


@pytest.mark.parametrize("environment, netrc_line, mode", [
    ({}, None, "offline"),
    ({"WANDB_API_KEY": "k" * 40}, None, "online"),
    ({}, "machine api.wandb.ai login user password " + "k" * 40, "online"),
    ({"WANDB_MODE": "disabled"}, "machine api.wandb.ai login user password " + "k" * 40, "disabled"),
])
def test_wandb_is_offline_unless_you_have_logged_in(tmp_path, monkeypatch, environment, netrc_line, mode):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if netrc_line:
        (tmp_path / "netrc").write_text(netrc_line + "\n")
    assert trackers.wandb_mode() == mode
