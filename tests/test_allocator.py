"""The glibc settings that let XLA:CPU reuse its buffers between calls (jaxgpt/system/allocator.py)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys

import pytest

FAULTS_PER_CALL = """
import resource, sys
if sys.argv[1] in ("keep", "kept then default"):
    from jaxgpt.system.allocator import keep_freed_memory, use_default_malloc
    assert keep_freed_memory()
    if sys.argv[1] == "kept then default":
        assert use_default_malloc()
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # y is a (160, 65536) float32 temporary: 40 MB, above glibc's largest mmap threshold (32 MB)
    y = jnp.sin(x[:, None] * jnp.arange(65536.0))
    return (y @ y.T).sum()

x = jnp.arange(160.0)
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_per_call(mode: str) -> float:
    """The median number of minor page faults of 20 calls (the heap still grows now and then)."""
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL, mode], capture_output=True, text=True, check=True)
    return statistics.median(int(line) for line in out.stdout.split())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_kept_memory_is_reused_without_page_faults() -> None:
    default, kept = faults_per_call("default"), faults_per_call("keep")
    assert default >= 10_240  # each call faults the 40 MB temporary (10,240 pages of 4 KiB) in again
    assert kept < 100
    assert faults_per_call("kept then default") >= 10_240  # use_default_malloc undoes it


@pytest.mark.parametrize("config_name, batch_size", [("small", 16), ("speedrun", 32), ("lecture", 16)])
def test_activation_estimate_is_within_a_factor_of_two_of_xla_plan(config_name: str, batch_size: int) -> None:
    """step_activation_bytes, which decides whether jaxgpt.train keeps freed memory, against XLA's own plan of the
    compiled step's temporaries (one step per call)."""
    import dataclasses

    import jax
    import numpy as np

    from jaxgpt.core.config import load_config
    from jaxgpt.core.mfu import step_activation_bytes
    from jaxgpt.core.model import build_model, init_params
    from jaxgpt.core.optim import make_optimizer
    from jaxgpt.run.step import TrainState, make_train_step
    from jaxgpt.system import sharding

    config = dataclasses.replace(load_config(config_name), batch_size=batch_size, steps_per_call=1).for_vocab(65)
    model, tx = build_model(config.model), make_optimizer(config)
    state = jax.eval_shape(lambda: TrainState.fresh(init_params(config.model, jax.random.key(0)), tx))
    placement = sharding.Placement.for_state(sharding.make_mesh(1, jax.devices()[:1]), state)
    step = make_train_step(config, model, tx, placement).lower(state, jax.ShapeDtypeStruct((10_000,), np.int32))
    planned = step.compile().memory_analysis().temp_size_in_bytes
    assert planned / 2 < step_activation_bytes(config.model, batch_size) < 2 * planned


def test_large_steps_and_pretrained_starts_return_to_default_malloc() -> None:
    from jaxgpt.cli import worth_keeping
    from jaxgpt.core.config import load_config

    for name, kept in (("small", True), ("speedrun", True), ("lecture", False), ("shakespeare_char", False),
                       ("finetune_shakespeare", False)):
        assert worth_keeping(load_config(name)) == kept, name


def test_glibc_tunables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from jaxgpt.system.allocator import keep_freed_memory

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert not keep_freed_memory()
