"""Sharding: partition specs, the batch check, multi-host start-up, and sharded training equal to one device.

Runs on several devices live in subprocesses, because the number of CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N) is fixed when jax starts. They all start at once
(module fixture `runs`) and use `--dropout=0`: with dropout the masks are the same on every mesh, but
AdamW divides by sqrt(v) + 1e-8, which for the few weights whose gradient nearly cancels magnifies the
float noise of a different summation order (measured: one weight of 30k off by 7e-5 after 20 steps),
so the parameter comparison would measure that noise rather than the sharding.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from jaxgpt.cli import run_cli
from jaxgpt.core.config import load_config
from jaxgpt.core.model import init_params
from jaxgpt.core.optim import make_optimizer
from jaxgpt.run.step import TrainState
from jaxgpt.store import checkpoint
from jaxgpt.system import sharding
from jaxgpt.system.errors import UsageError
from jaxgpt.train import main

MESH_4x2 = AbstractMesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)  # shapes only, no devices
RTOL = 1e-5  # relative: losses elementwise, parameters per tensor in L2 norm
STEPS = 20
RUN_TIMEOUT_S = 420  # a hung collective must fail the test, not stall CI
# Fast XLA:CPU compiles (the partitioning under test happens before the backend); several devices.
XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count={devices}"
GLOO_LINE = re.compile(r"\[Gloo\]|is connected to \d+ peer ranks")


# ---------------------------------------------------------------- partition specs and checks (in-process)

def test_param_spec_shards_the_largest_divisible_axis_of_matrices():
    assert sharding.param_spec((32, 128), fsdp=2) == PartitionSpec(None, "fsdp")
    assert sharding.param_spec((128, 32), fsdp=2) == PartitionSpec("fsdp", None)
    assert sharding.param_spec((65, 32), fsdp=2) == PartitionSpec(None, "fsdp")  # 65 is odd: the next largest
    assert sharding.param_spec((32, 32), fsdp=4) == PartitionSpec("fsdp", None)  # equal sizes: the first


def test_param_spec_replicates_vectors_scalars_and_indivisible_matrices():
    assert sharding.param_spec((128,), fsdp=2) == PartitionSpec()
    assert sharding.param_spec((), fsdp=2) == PartitionSpec()
    assert sharding.param_spec((65, 65), fsdp=2) == PartitionSpec()
    assert sharding.param_spec((32, 128), fsdp=1) == PartitionSpec()


@given(shape=st.lists(st.integers(1, 96), min_size=0, max_size=4).map(tuple), fsdp=st.integers(1, 8))
def test_param_spec_property(shape, fsdp):
    spec = tuple(sharding.param_spec(shape, fsdp))
    sharded = [axis for axis, name in enumerate(spec) if name is not None]
    assert len(sharded) <= 1 and set(spec) <= {None, "fsdp"}
    divisible = [shape[axis] for axis in range(len(shape)) if shape[axis] % fsdp == 0]
    if fsdp > 1 and len(shape) >= 2 and divisible:
        assert len(spec) == len(shape) and sharded and shape[sharded[0]] == max(divisible)
    else:
        assert not sharded


def test_placement_shards_params_and_adam_moments_alike():
    config = load_config("tiny")
    tx = make_optimizer(config)
    abstract_state = jax.eval_shape(lambda: TrainState.fresh(init_params(config.model, jax.random.key(0)), tx))
    placement = sharding.Placement.for_state(MESH_4x2, abstract_state)
    specs = jax.tree_util.tree_map(lambda named: named.spec, placement.state)
    adam = specs.opt_state[0]  # ScaleByAdamState(count, mu, nu)
    assert adam.mu == adam.nu == specs.params
    assert specs.params["blocks_0"]["ffwd"]["fc"] == {"kernel": PartitionSpec(None, "fsdp"), "bias": PartitionSpec()}
    assert specs.params["token_embedding_table"]["embedding"] == PartitionSpec(None, "fsdp")  # (65, 32)
    assert specs.step == adam.count == PartitionSpec()


def test_batch_size_must_split_over_the_batch_axes():
    mesh = MESH_4x2
    sharding.check_batch_size(16, mesh)
    with pytest.raises(UsageError, match=r"batch_size 12 does not split over 8 devices \(data 4 x fsdp 2\); "
                                         r"use a multiple of 8, e.g. --batch_size=8 or 16"):
        sharding.check_batch_size(12, mesh)
    with pytest.raises(UsageError, match="use a multiple of 8, e.g. --batch_size=8$"):
        sharding.check_batch_size(3, mesh)


def test_mesh_over_all_devices_and_fsdp_must_divide_them():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "fsdp") and mesh.devices.size == len(jax.devices())
    assert mesh.shape["fsdp"] == 1 and set(mesh.axis_types) == {AxisType.Auto}
    n = len(jax.devices())
    with pytest.raises(UsageError, match=rf"--fsdp={n + 1} does not divide the {n} devices; use one of 1"):
        sharding.make_mesh(fsdp=n + 1)


def test_cli_reports_a_bad_fsdp_in_one_line(tmp_path, small_text_file, capsys):
    n = len(jax.devices())
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--config=tiny", f"--data_path={small_text_file}", f"--out_dir={tmp_path / 'run'}",
                       f"--fsdp={n + 1}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --fsdp={n + 1} does not divide the {n} devices; use one of 1\n"
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(("env", "flag", "expected"), [
    ({}, False, False),
    ({}, True, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, False, True),
    ({"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1"}, False, True),
    ({"TPU_WORKER_HOSTNAMES": "t1k-0"}, False, False),  # a single-host TPU VM
])
def test_multihost_requested_by_flag_or_environment(monkeypatch, env, flag, expected):
    for name in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert sharding.multihost_requested(flag) is expected


def test_bad_process_count_is_a_usage_error(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(UsageError, match=r"\$JAX_NUM_PROCESSES must be an integer, got 'two'"):
        sharding.initialize_distributed(False)
    assert not jax.distributed.is_initialized()


def test_cli_multihost_without_a_coordinator_fails_in_one_line(tmp_path, small_text_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_"))}
    result = subprocess.run([sys.executable, "-m", "jaxgpt.train", "--config=tiny", "--multihost",
                             f"--data_path={small_text_file}", f"--out_dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: multi-host start-up failed (coordinator_address should be defined")
    assert result.stderr.rstrip().endswith("set JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and "
                                           "JAX_PROCESS_ID") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- sharded runs (subprocesses)

@dataclasses.dataclass
class Run:
    out_dir: Path
    procs: list[subprocess.Popen]
    outputs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (stdout, stderr) per process


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(out_dir: Path, data_path: Path, devices: int, *flags: str,
           extra_env: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_"))}
    env.update(XLA_FLAGS=XLA_FLAGS.format(devices=devices), JAX_PLATFORMS="cpu", **(extra_env or {}))
    argv = [sys.executable, "-m", "jaxgpt.train", "--config=tiny", "--dropout=0", f"--max_iters={STEPS}",
            "--eval_interval=5", "--sample_chars=0", "--progress=false", f"--data_path={data_path}",
            f"--out_dir={out_dir}", *flags]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shakespeare_text) -> dict[str, Run]:
    """The same 20 steps of `tiny` on 1 device, 8-way data, 4x2 data x fsdp, and two processes x 2 devices."""
    root = tmp_path_factory.mktemp("sharding")
    data_path = root / "small.txt"
    data_path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    port = _free_port()
    two_processes = {  # started alone: gloo gives up if one process reaches it 30 s after the other
        "two_processes": lambda: Run(root / "two", [
            _start(root / "two", data_path, 2, "--multihost", extra_env={
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
            for i in range(2)]),
    }
    one_process_each = {
        "one_device": lambda: Run(root / "one", [_start(root / "one", data_path, 1)]),
        "data8": lambda: Run(root / "data8", [_start(root / "data8", data_path, 8)]),
        "data4_fsdp2": lambda: Run(root / "data4_fsdp2", [_start(root / "data4_fsdp2", data_path, 8, "--fsdp=2")]),
    }
    deadline = time.monotonic() + RUN_TIMEOUT_S
    runs: dict[str, Run] = {}
    try:
        for group in (two_processes, one_process_each):
            started = {name: start() for name, start in group.items()}
            runs.update(started)
            for name, run in started.items():
                for proc in run.procs:
                    stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                    assert proc.returncode == 0, f"{name} failed:\n{stderr[-3000:]}"
                    run.outputs.append((stdout, stderr))
    finally:
        for run in runs.values():
            for proc in run.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    return runs


def _metrics(run: Run) -> list[dict]:
    return [json.loads(line) for line in (run.out_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_training(run: Run, reference: Run) -> None:
    got, want = _metrics(run), _metrics(reference)
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 5, 10, 15, 20]
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=RTOL, err_msg=key)
    _, params, _ = checkpoint.load(run.out_dir)
    _, ref_params, _ = checkpoint.load(reference.out_dir)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(ref_params)
    for (path, got_leaf), want_leaf in zip(leaves, jax.tree_util.tree_leaves(ref_params), strict=True):
        want_leaf = np.asarray(want_leaf, np.float64)
        error = np.linalg.norm(np.asarray(got_leaf, np.float64) - want_leaf) / np.linalg.norm(want_leaf)
        assert error <= RTOL, f"{jax.tree_util.keystr(path)}: relative error {error:.2e}"
    assert want[-1]["val_loss"] < want[0]["val_loss"] - 0.2  # the runs did train


@pytest.mark.parametrize("name", ["data8", "data4_fsdp2"])
def test_sharded_training_matches_one_device(runs, name):
    _assert_same_training(runs[name], runs["one_device"])


def test_fsdp_shards_matrices_and_replicates_vectors(runs):
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.metadata(runs["data4_fsdp2"].out_dir / "checkpoints" / str(STEPS) / "params").item_metadata
    specs = {name: tuple(leaf.sharding.partition_spec) for name, leaf in saved["blocks_0"]["ffwd"]["fc"].items()}
    assert saved["blocks_0"]["ffwd"]["fc"]["kernel"].shape == (32, 128)
    assert specs == {"kernel": (None, "fsdp"), "bias": ()}
    assert tuple(saved["blocks_0"]["ffwd"]["fc"]["kernel"].sharding.shape) == (4, 2)  # the data x fsdp mesh


def test_two_processes_match_one_and_only_process_0_reports(runs):
    run = runs["two_processes"]
    _assert_same_training(run, runs["one_device"])
    # gloo's C++ library prints "[Gloo] Rank i is connected to n peer ranks ..." on stdout in every process, from
    # several threads: a line of it can arrive cut in two ("[Gloo] Rank " and "2 is connected to 3 peer ranks...")
    # (and its pieces can leave an empty line behind)
    main_lines, other_lines = ([line for line in out.splitlines() if line.strip() and not GLOO_LINE.search(line)]
                               for out, _ in run.outputs)
    assert main_lines[0].endswith("M parameters") and main_lines[-2].startswith("step 20: train loss")
    assert main_lines[-1] == (f"no inspect.html for a multi-host run: python -m jaxgpt.inspect {run.out_dir} "
                              "--text=FILE writes one")
    assert other_lines == []
    assert (runs["data8"].out_dir / "inspect.html").exists()  # one process, 8 devices: written
    assert len(_metrics(run)) == 5  # one line per evaluation: process 1 wrote none


SAVE_BOTH_SCRIPT = """
import sys
import jax
import jax.numpy as jnp
from jaxgpt.system import sharding
from jaxgpt.store.checkpoint import RunCheckpoints

sharding.initialize_distributed(True)
replicated = jax.sharding.NamedSharding(sharding.make_mesh(), jax.sharding.PartitionSpec())
params = {"w": jax.make_array_from_callback((8, 8), replicated, lambda index: jnp.ones((8, 8))[index])}
with RunCheckpoints(sys.argv[1], keep=2) as checkpoints:
    for step in range(1, 4):  # as at an evaluation that is also a checkpoint step and a new best
        checkpoints.save(step, params, params, {"step": step})
        checkpoints.save_best(step, params, {"step": step, "val_loss": 1.0 / step})
"""


def test_two_processes_save_the_latest_and_the_best_checkpoint_of_the_same_step(tmp_path):
    # orbax names its cross-process barriers after the step: without a prefix per manager, the two saves of
    # one step waited on one barrier and failed ("Barrier _async_write_complete.1 is already ongoing").
    script = tmp_path / "save_both.py"
    script.write_text(SAVE_BOTH_SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")],
                              env={**env, "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for proc in procs:
            _, stderr = proc.communicate(timeout=120)
            assert proc.returncode == 0, stderr[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2", "3"]
    assert os.listdir(tmp_path / "run" / "checkpoints_best") == ["3"]
