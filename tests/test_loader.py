"""Host-gathered batches (jaxgpt/data/batches.py): the on-device path's windows, the same training, exact resume."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.cli import run_cli
from jaxgpt.core.config import load_config
from jaxgpt.core.keys import eval_keys
from jaxgpt.data import batches as data
from jaxgpt.data.batches import HostBatches, draw_eval_windows
from jaxgpt.data.writer import prepare
from jaxgpt.run.training import Run, train
from jaxgpt.system import sharding
from jaxgpt.train import main as train_main


def memmap_of(tokens: np.ndarray, path: Path, dtype=np.uint16) -> np.memmap:
    """`tokens` written to `path` as a prepared dataset stores them, and mapped back read-only."""
    np.asarray(tokens, dtype).tofile(path)
    return np.memmap(path, dtype=dtype, mode="r")


def test_host_windows_are_the_device_windows(tmp_path):
    """For the same tokens, HostBatches gathers exactly the windows the compiled step draws on the device:
    training calls of several steps with micro-batches, and the loss estimates' batches."""
    config = dataclasses.replace(load_config("tiny"), batch_size=4, grad_accum=3, eval_iters=5, max_iters=12)
    T = config.block_size
    tokens = np.random.default_rng(0).integers(0, 65, 5000).astype(np.int32)
    placement = sharding.Placement(sharding.make_mesh(1, jax.devices()[:1]), None)
    host = HostBatches(config, placement, memmap_of(tokens, tmp_path / "train.bin"),
                       memmap_of(tokens[:900], tmp_path / "val.bin"))
    on_device = jnp.asarray(tokens)
    try:
        for first in (0, 3, 6, 9):  # in order (prefetched) and then again out of order (gathered on demand)
            offsets = data.train_offsets(config.seed, jnp.arange(first, first + 3), len(tokens), 3, 4, T)
            np.testing.assert_array_equal(host.train_windows(first, 3), data.gather_windows(on_device, offsets, T))
        np.testing.assert_array_equal(host.train_windows(3, 3), host.train_windows(3, 3))
        for split, split_tokens in (("train", tokens), ("val", tokens[:900])):
            key = eval_keys(config.seed, 7)[1]
            expected = draw_eval_windows(5, 4, T, jnp.asarray(split_tokens), key)
            np.testing.assert_array_equal(host.eval_windows(split, key), expected)
    finally:
        host.close()


def prepare_quietly(text_file: Path, out: Path, **options) -> Path:
    prepare([str(text_file)], out, progress=False, log=lambda _: None, **options)
    return out


@pytest.fixture
def char_dataset(tmp_path, small_text_file) -> Path:
    """The text file prepared with the char tokenizer: the same tokens and split as the file itself."""
    return prepare_quietly(small_text_file, tmp_path / "char")


def run_config(tmp_path: Path, text_file: Path, name: str, **overrides):
    settings = {"data_path": str(text_file), "out_dir": str(tmp_path / name), "progress": False, "sample_chars": 0,
                "max_iters": 8, "eval_interval": 4, "eval_iters": 3, "grad_accum": 2, **overrides}
    return dataclasses.replace(load_config("tiny"), **settings)


def finish(config, log=None):
    with Run(config, log=log or (lambda _: None)) as run:
        run.fit()
        return run.history, jax.device_get(run.state)


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "data_wait", "mfu")} for r in records]


@pytest.fixture
def device_run(tmp_path, small_text_file):
    """The reference: 8 steps of `tiny` with 2 micro-batches per step, tokens on the device."""
    return finish(run_config(tmp_path, small_text_file, "device"))


def test_host_path_trains_exactly_as_the_device_path(device_run, char_dataset, tmp_path):
    """The same text trains to the same bits from the text file (tokens on the device) and from its prepared
    dataset (memory-mapped, windows gathered by the host)."""
    history, state = finish(run_config(tmp_path, char_dataset, "host"))
    assert without_timing(history) == without_timing(device_run[0])
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(device_run[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(0.0 <= r["data_wait"] < 1.0 for r in history[1:])  # measured on the host path only
    assert all(r["data_wait"] is None for r in device_run[0])


def test_host_path_resumes_bitwise(device_run, char_dataset, tmp_path):
    first_half = run_config(tmp_path, char_dataset, "host", max_iters=4, checkpoint_interval=4)
    finish(first_half)
    history, state = finish(dataclasses.replace(first_half, max_iters=8, resume=True))
    assert without_timing(history) == without_timing(device_run[0])
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(device_run[1]), strict=True):
        np.testing.assert_array_equal(a, b)


TWO_PROCESS_SCRIPT = """
import dataclasses, json
import jax.numpy as jnp, numpy as np
from jax.experimental import multihost_utils
from jaxgpt.data import batches as loader
from jaxgpt.system import sharding
from jaxgpt.core.config import load_config

sharding.initialize_distributed(True)
read = []  # the offsets of every window this process gathered
gather = loader.gather_windows


def recording_gather(tokens, offsets, T):
    read.extend(np.ravel(offsets).tolist())
    return gather(tokens, offsets, T)


loader.gather_windows = recording_gather
config = dataclasses.replace(load_config("tiny"), batch_size=8, grad_accum=2, max_iters=3)
tokens = np.random.default_rng(0).integers(0, 65, 1_000_000).astype(np.uint16)
mesh = sharding.make_mesh()
host = loader.HostBatches(config, sharding.Placement(mesh, None), tokens, tokens)
windows = host.train_windows(0, 3)  # (K, A, B, T + 1): all 3 steps (nothing to prefetch), 2 x 8 rows each
offsets = loader.train_offsets(config.seed, jnp.arange(3), len(tokens), 2, 8, config.block_size)
expected = gather(tokens.astype(np.int32), np.asarray(offsets), config.block_size)
whole = multihost_utils.process_allgather(windows, tiled=True)
host.close()
print(json.dumps({"read": read, "all": np.ravel(offsets).tolist(), "devices": len(mesh.devices.flat),
                  "equal": bool((np.asarray(whole) == expected).all())}))
"""


def test_two_processes_read_disjoint_rows(tmp_path):
    """Two processes of 2 devices each: each gathers only the rows its devices hold (half the batch), together
    every row once, and the global array is the windows of the one-process path."""
    import json
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT, encoding="utf-8")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TPU_"))}
    env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "JAX_PROCESS_ID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    reports = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=180)
            assert proc.returncode == 0, stderr[-3000:]
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first, second = (sorted(r["read"]) for r in reports)
    every = sorted(reports[0]["all"])
    assert reports[0]["devices"] == 4 and len(every) == 3 * 2 * 8 == len(set(every))
    assert len(first) == len(second) == len(every) // 2
    assert sorted(first + second) == every and not set(first) & set(second)
    assert reports[0]["equal"] and reports[1]["equal"]


def test_a_bpe_dataset_trains_reports_bits_per_byte_and_samples_text(tmp_path, small_text_file):
    dataset = prepare_quietly(small_text_file, tmp_path / "bpe_data", tokenizer="bpe", vocab_size=300)
    config = run_config(tmp_path, dataset, "bpe_run", grad_accum=1, sample_chars=20)
    result = train(config, log=lambda _: None)
    assert result.config.model.vocab_size == 300
    first, last = result.history[0], result.history[-1]
    assert last["val_loss"] < first["val_loss"]
    assert last["val_bpb"] < last["val_loss"] / math.log(2)  # BPE tokens stand for more than one byte each


def test_resume_with_data_of_another_tokenizer_is_refused_in_one_line(char_dataset, tmp_path, small_text_file,
                                                                     capsys):
    bpe = prepare_quietly(small_text_file, tmp_path / "bpe", tokenizer="bpe", vocab_size=300)
    run = tmp_path / "run"
    common = ["--config=tiny", f"--out_dir={run}", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
              "--sample_chars=0", "--progress=false"]
    run_cli(train_main, [*common, f"--data_path={char_dataset}"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        run_cli(train_main, [*common, f"--data_path={bpe}", "--max_iters=4", "--resume"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err == (f"error: cannot resume {run}: it was trained on character tokens (58), but {bpe} holds a BPE "
                   "of 300 tokens; resume with the data the run was trained on, or start a new --out_dir\n")
