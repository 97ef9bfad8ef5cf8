"""Checkpoints: exact resume, real interruption, damaged checkpoints, divergence, load() and cross-device restore.

Every comparison is bitwise: a resumed run must be the run that would have happened.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxgpt.cli import run_cli
from jaxgpt.core import optim
from jaxgpt.core.config import TrainConfig, load_config
from jaxgpt.run.training import TrainResult, train
from jaxgpt.store import checkpoint, rundir
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.system.interrupt import StopRequest
from jaxgpt.system.logs import quiet_vanishing_checkpoints
from jaxgpt.train import main as train_main

# `tiny` for 60 steps: evaluations at 0, 20, 40, 60; checkpoints at 15, 30, 45, 60 (the last 3 kept).
RUN = {"progress": False, "sample_chars": 0, "max_iters": 60, "eval_interval": 20, "checkpoint_interval": 15,
       "keep_checkpoints": 3}


def run_config(out_dir: Path, data_path: Path, **overrides) -> TrainConfig:
    settings = {"data_path": str(data_path), "out_dir": str(out_dir), **RUN}
    return dataclasses.replace(load_config("tiny"), **{**settings, **overrides})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, shakespeare_text) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_file) -> TrainResult:
    """The uninterrupted reference run."""
    return train(run_config(tmp_path_factory.mktemp("straight") / "run", data_file), log=lambda _: None)


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "data_wait")} for r in records]


def assert_trees_equal(actual, expected) -> None:
    leaves_a, leaves_e = jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)
    assert len(leaves_a) == len(leaves_e)
    for a, e in zip(leaves_a, leaves_e, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def assert_same_run(out_dir: Path, straight: TrainResult) -> None:
    """The run in out_dir ended with the reference's params and logged the reference's metrics."""
    _, params, _ = checkpoint.load(out_dir)
    assert_trees_equal(params, straight.state.params)
    assert without_timing(RunDir(out_dir).read_metrics()) == without_timing(straight.history)


def step_dirs(out_dir: Path, name: str = rundir.CHECKPOINTS) -> list[int]:
    return sorted(int(p.name) for p in (out_dir / name).iterdir() if p.name.isdigit())


def copy_run(straight: TrainResult, dest: Path) -> Path:
    shutil.copytree(straight.config.out_dir, dest)
    return dest


def test_reference_run_layout(straight):
    out = Path(straight.config.out_dir)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "checkpoints_best", "config.json", "inspect.html",
                                                     "loss.png", "metrics.jsonl", "tokenizer.json"]
    assert step_dirs(out) == [30, 45, 60]
    best_val = min(r["val_loss"] for r in straight.history)
    best_step = next(r["step"] for r in straight.history if r["val_loss"] == best_val)
    assert step_dirs(out, rundir.BEST) == [best_step]
    assert TrainConfig.load(out / "config.json") == straight.config


def test_stop_then_resume_is_bitwise_identical(straight, tmp_path, data_file):
    stop = StopRequest()

    def stop_after_step_20(line: str) -> None:  # as if SIGINT arrived during the evaluation at step 20
        if line.startswith("step 20:"):
            stop.signum = signal.SIGINT

    config = run_config(tmp_path / "run", data_file)
    first = train(config, log=stop_after_step_20, stop=stop)
    assert first.interrupted and int(first.state.step) == 20
    assert step_dirs(tmp_path / "run") == [15, 20]  # the interval one and the one saved on stopping

    lines: list[str] = []
    resumed = train(dataclasses.replace(config, resume=True), log=lines.append)
    assert "resuming from step 20" in lines
    assert_trees_equal(resumed.state, straight.state)  # step, params, optimizer state
    assert without_timing(resumed.history) == without_timing(straight.history)
    assert_same_run(tmp_path / "run", straight)


def test_resume_can_train_longer(straight, tmp_path, data_file):
    config = run_config(tmp_path / "run", data_file, max_iters=40)
    train(config, log=lambda _: None)
    lines: list[str] = []
    train(dataclasses.replace(config, max_iters=60, resume=True, steps_per_call=5), log=lines.append)
    assert "resuming with changed settings: max_iters 40 -> 60" in lines  # steps per call change no result
    assert_same_run(tmp_path / "run", straight)


def test_muon_run_resumes_bitwise_and_keeps_its_optimizer(tmp_path, data_file):
    """--optimizer=muon: Muon's state (momentum, counts, Newton-Schulz coefficients) and AdamW's for the other
    params are checkpointed and restored, so a stopped run resumes as if uninterrupted; resuming it with AdamW
    is refused before anything changes."""
    config = run_config(tmp_path / "run", data_file, optimizer="muon", max_iters=40, checkpoint_interval=20)
    straight = train(dataclasses.replace(config, out_dir=str(tmp_path / "straight")), log=lambda _: None)
    stop = StopRequest()

    def stop_after_step_20(line: str) -> None:
        if line.startswith("step 20:"):
            stop.signum = signal.SIGINT

    assert train(config, log=stop_after_step_20, stop=stop).interrupted
    with pytest.raises(UsageError, match=r"the config differs in optimizer \(checkpoint 'muon', now 'adamw'\)"):
        train(dataclasses.replace(config, resume=True, optimizer="adamw"), log=lambda _: None)
    lines: list[str] = []
    resumed = train(dataclasses.replace(config, resume=True), log=lines.append)
    assert "resuming from step 20" in lines
    assert_trees_equal(resumed.state, straight.state)  # step, params, both optimizers' states
    assert without_timing(resumed.history) == without_timing(straight.history)


def truncate_arrays(step_dir: Path) -> None:
    for path in (step_dir / "params").rglob("d/*"):
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def delete_params(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "params")


def corrupt_meta(step_dir: Path) -> None:
    (step_dir / "meta" / "metadata").write_text('{"step": ')


def nan_in_params(step_dir: Path) -> None:
    """The checkpoint written again, complete and readable, with one NaN in its params (a diverged state)."""
    with ocp.CheckpointManager(step_dir.parent) as manager:
        restored = manager.restore(int(step_dir.name))
        params = jax.tree_util.tree_map(np.array, restored["params"])  # writable copies
        leaf = jax.tree_util.tree_leaves(params)[0]
        leaf.flat[0] = np.nan
        manager.delete(int(step_dir.name))
        manager.save(int(step_dir.name), args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(restored["opt_state"]),
            meta=ocp.args.JsonSave(restored["meta"])))


@pytest.mark.parametrize(("damage", "reason"), [(truncate_arrays, ""), (delete_params, ""), (corrupt_meta, ""),
                                                (nan_in_params, "its params are not all finite")])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(straight, tmp_path, damage, reason):
    run = copy_run(straight, tmp_path / "run")
    damage(run / "checkpoints" / "60")
    lines: list[str] = []
    train(dataclasses.replace(straight.config, out_dir=str(run), resume=True), log=lines.append)
    assert any(line.startswith(f"checkpoint at step 60 is unusable ({reason}") for line in lines), lines
    assert "falling back to the previous complete checkpoint, step 45" in lines
    assert step_dirs(run, rundir.UNUSABLE) == [60]  # kept for inspection, out of the way
    assert_same_run(run, straight)


def other_optimizer_layout(step_dir: Path) -> None:
    """The checkpoint written again, complete and readable, with its optimizer state in another tree (as another
    optax or jaxgpt version could lay it out)."""
    with ocp.CheckpointManager(step_dir.parent) as manager:
        restored = manager.restore(int(step_dir.name))
        manager.delete(int(step_dir.name))
        manager.save(int(step_dir.name), args=ocp.args.Composite(
            params=ocp.args.StandardSave(restored["params"]),
            opt_state=ocp.args.StandardSave({"older": restored["opt_state"]}),
            meta=ocp.args.JsonSave(restored["meta"])))


def test_checkpoint_in_another_layout_is_refused_not_moved_aside(straight, tmp_path):
    """Arrays laid out unlike this version's are not damage: resuming is refused with one line, the checkpoint
    stays where it is, and its weights still start a new run through --init_from."""
    run = copy_run(straight, tmp_path / "run")
    other_optimizer_layout(run / "checkpoints" / "60")
    with pytest.raises(UsageError, match=r"^cannot resume from step 60 in .*: its opt_state are laid out unlike this "
                                         r"jaxgpt's \(\d+ arrays stored, \d+ expected; first difference at "
                                         r"\S+\): another version of jaxgpt or optax wrote it; .*"
                                         rf"--init_from={re.escape(str(run))}$"):
        train(dataclasses.replace(straight.config, out_dir=str(run), resume=True), log=lambda _: None)
    assert step_dirs(run, rundir.CHECKPOINTS)[-1] == 60 and not (run / rundir.UNUSABLE).exists()
    lines: list[str] = []
    train(run_config(tmp_path / "new", straight.config.data_path, max_iters=2, init_from=str(run)), log=lines.append)
    assert any(line.startswith(f"starting from {run}") for line in lines), lines


def test_save_killed_before_commit_is_ignored(straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    unfinished = run / "checkpoints" / "60.orbax-checkpoint-tmp-1234"  # what a save killed mid-write leaves
    (run / "checkpoints" / "60").rename(unfinished)
    lines: list[str] = []
    train(dataclasses.replace(straight.config, out_dir=str(run), resume=True), log=lines.append)
    assert "resuming from step 45" in lines
    assert not unfinished.exists()
    assert_same_run(run, straight)


def test_no_usable_checkpoint_is_a_clear_error(straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    for step in (30, 45, 60):
        truncate_arrays(run / "checkpoints" / str(step))
    with pytest.raises(JaxgptError, match=r"no usable checkpoint in .*checkpoints: step 60: .*; step 45: .*; step 30"):
        train(dataclasses.replace(straight.config, out_dir=str(run), resume=True), log=lambda _: None)


def test_non_finite_stops_naming_the_step_and_keeps_the_last_good_checkpoint(straight, tmp_path, data_file,
                                                                              monkeypatch, capsys):
    def poisoned_schedule(config):  # the update of step 33 multiplies by NaN
        return lambda count: jnp.where(count >= 33, jnp.nan, config.learning_rate)

    monkeypatch.setattr(optim, "learning_rate_schedule", poisoned_schedule)
    run = tmp_path / "run"
    flags = [f"--data_path={data_file}", f"--out_dir={run}", *(f"--{k}={v}" for k, v in RUN.items())]
    with pytest.raises(SystemExit) as exited:
        run_cli(train_main, ["--config=tiny", *flags])
    assert exited.value.code == 1
    error = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: training diverged: the loss or parameters became non-finite at step 33; the latest "
                        r"checkpoint is still step 30 in \S+; lower --learning_rate or set --grad_clip, then --resume",
                        error), error
    assert step_dirs(run) == [15, 30]  # nothing written after the bad step
    assert [r["step"] for r in RunDir(run).read_metrics()] == [0, 20]
    _, params, _ = checkpoint.load(run)
    _, reference_params, _ = checkpoint.load(straight.config.out_dir, step=30)
    assert_trees_equal(params, reference_params)


def test_load_latest_step_and_best(straight):
    out = Path(straight.config.out_dir)
    config, params, tokenizer = checkpoint.load(out)
    assert config == straight.config and tokenizer == straight.dataset.tokenizer
    assert_trees_equal(params, straight.state.params)
    _, at_30, _ = checkpoint.load(out, step=30)
    assert not np.array_equal(at_30["lm_head"]["kernel"], params["lm_head"]["kernel"])
    best_step = step_dirs(out, rundir.BEST)[0]
    _, best, _ = checkpoint.load(out, step="best")
    _, same_step, _ = checkpoint.load(out, step=best_step)
    assert_trees_equal(best, same_step)


def test_save_params_directories_still_load(straight, tmp_path):
    """What converters write (config.json + tokenizer.json + save_params) loads without training checkpoints."""
    out = tmp_path / "exported"
    out.mkdir()
    straight.config.save(out / "config.json")
    straight.dataset.tokenizer.save(out / "tokenizer.json")
    checkpoint.save_params(out, straight.state.params, straight.config.model)
    config, params, tokenizer = checkpoint.load(out)
    assert config == straight.config and tokenizer == straight.dataset.tokenizer
    assert_trees_equal(params, straight.state.params)


def test_overwrite_removes_only_what_a_run_writes(straight, tmp_path):
    run = copy_run(straight, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    RunDir(run).create(overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended before {path} appeared: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_the_printed_command_resumes(straight, tmp_path, data_file, signum, exit_code):
    out = tmp_path / "run"
    # A checkpoint every step keeps the run going long enough to be interrupted in the middle.
    args = [f"--data_path={data_file}", f"--out_dir={out}", "--config=tiny", "--max_iters=60", "--eval_interval=20",
            "--checkpoint_interval=1", "--progress=false", "--sample_chars=0"]
    process = subprocess.Popen([sys.executable, "-m", "jaxgpt.train", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(out / "checkpoints" / "1", process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == exit_code, stderr
    found = re.search(r"interrupted at step (\d+), checkpoint saved; resume with: (python -m jaxgpt\.train .*--resume)",
                      stderr)
    assert found, stderr
    assert "Traceback" not in stderr
    stopped_at = int(found[1])
    assert 1 <= stopped_at < 60 and step_dirs(out)[-1] == stopped_at
    if signum != signal.SIGINT:
        return
    command = shlex.split(found[2])  # exactly what the user is told to run, plus a rarer checkpoint
    resumed = subprocess.run([sys.executable, *command[1:], "--checkpoint_interval=20"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {stopped_at}" in resumed.stdout
    assert_same_run(out, straight)


CROSS_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from jaxgpt.store import checkpoint
    from jaxgpt.core.optim import make_optimizer

    source, dest = sys.argv[1:]
    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("devices",))

    def spread(x):  # split the first axis over the 8 devices where it divides, else replicate
        spec = PartitionSpec("devices") if x.ndim and x.shape[0] % 8 == 0 else PartitionSpec()
        return jax.device_put(x, NamedSharding(mesh, spec))

    config, params, _ = checkpoint.load(source, step=45)
    params_like = jax.tree_util.tree_map(spread, params)
    opt_state_like = jax.tree_util.tree_map(spread, make_optimizer(config).init(params))
    with checkpoint.RunCheckpoints(source, keep=3) as checkpoints:
        restored = checkpoints.restore_latest(params_like, opt_state_like, print, lambda step, meta: None)
    assert restored.step == 45
    leaves = jax.tree_util.tree_leaves((restored.params, restored.opt_state))
    assert all(len(leaf.sharding.device_set) == 8 for leaf in leaves)
    assert sum(not leaf.sharding.is_fully_replicated for leaf in leaves) > 10
    for a, b in zip(jax.tree_util.tree_leaves(restored.params), jax.tree_util.tree_leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with checkpoint.RunCheckpoints(dest, keep=3) as checkpoints:
        checkpoints.save(45, restored.params, restored.opt_state, restored.meta)
    print("restored and saved on", len(jax.devices()), "devices")
""")


def test_restore_across_device_counts(straight, tmp_path):
    """Saved on 1 device, restored sharded over 8 (a subprocess), saved there, restored on 1 and continued."""
    source = copy_run(straight, tmp_path / "source")
    shutil.rmtree(source / "checkpoints" / "60")  # latest is now step 45
    dest = copy_run(straight, tmp_path / "dest")
    shutil.rmtree(dest / "checkpoints")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", CROSS_DEVICE_SCRIPT, str(source), str(dest)], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "restored and saved on 8 devices" in result.stdout
    lines: list[str] = []
    train(dataclasses.replace(straight.config, out_dir=str(dest), resume=True), log=lines.append)
    assert "resuming from step 45" in lines
    assert_same_run(dest, straight)


def test_reading_a_step_that_a_run_is_deleting_logs_no_orbax_warnings(straight, tmp_path, caplog):
    """A reader racing the run's deletion of an old step sees its files vanish; orbax warns ("Metadata file does
    not exist", "Item ... could not be restored") though the read goes on or is retried by jaxgpt."""
    run = copy_run(straight, tmp_path / "run")
    (run / rundir.CHECKPOINTS / "60" / "_CHECKPOINT_METADATA").unlink()  # as orbax's deletion leaves it midway
    with caplog.at_level("WARNING"):
        config, params, _ = checkpoint.load(run)
    assert config == straight.config and not caplog.records, [r.getMessage() for r in caplog.records]


def test_only_the_vanishing_file_warnings_are_quieted(caplog):
    absl = logging.getLogger("absl")
    with caplog.at_level("WARNING"), quiet_vanishing_checkpoints():
        absl.warning("Metadata file does not exist: /run/checkpoints/5/_CHECKPOINT_METADATA")
        absl.warning('Item "opt_state" was found in the checkpoint, but could not be restored. Please provide ...')
        absl.warning("something else")
    absl.warning("Metadata file does not exist: outside the read")
    assert [r.getMessage() for r in caplog.records] == ["something else",
                                                        "Metadata file does not exist: outside the read"]
