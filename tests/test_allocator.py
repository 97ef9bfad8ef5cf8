"""The glibc settings that let XLA:CPU reuse its buffers between calls (jaxgpt/system/allocator.py)."""

from __future__ import annotations

import os
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


def test_huge_pages_need_glibc_2_35_and_transparent_huge_pages(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from jaxgpt.system import allocator

    mode = tmp_path / "enabled"
    monkeypatch.setattr(allocator, "THP_MODE", mode)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    for text, possible in (("always [madvise] never\n", True), ("[always] madvise never\n", True),
                           ("always madvise [never]\n", False)):
        mode.write_text(text)
        assert allocator.huge_pages_possible() == possible, text
    mode.write_text("always [madvise] never\n")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.34"))
    assert not allocator.huge_pages_possible()
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))  # musl, macOS
    assert not allocator.huge_pages_possible()
    mode.unlink()
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert not allocator.huge_pages_possible()


RESTART = """
import os
from jaxgpt.system.allocator import restart_with_huge_pages
print(os.environ.get("GLIBC_TUNABLES"), flush=True)
restart_with_huge_pages()
print("done", flush=True)
"""


def test_restart_with_huge_pages_starts_the_command_again_once() -> None:
    from jaxgpt.system.allocator import HUGE_PAGES_TUNABLE, huge_pages_possible

    if not huge_pages_possible():
        pytest.skip("needs glibc >= 2.35 and transparent huge pages (always or madvise)")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", RESTART], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["None", HUGE_PAGES_TUNABLE, "done"]
    env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"  # yours win: no restart
    out = subprocess.run([sys.executable, "-c", RESTART], env=env, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["glibc.malloc.arena_max=4", "done"]


def test_train_restarts_only_as_a_command_and_only_for_large_steps(monkeypatch: pytest.MonkeyPatch, tmp_path,
                                                                   small_text_file) -> None:
    import jaxgpt.train
    from jaxgpt.system import allocator

    class Restarted(Exception):
        pass

    def restart() -> None:
        raise Restarted

    monkeypatch.setattr(allocator, "restart_with_huge_pages", restart)
    argv = ["--config=tiny", f"--data_path={small_text_file}", "--max_iters=2", "--eval_interval=2",
            "--eval_iters=1", "--sample_chars=0", "--progress=false"]
    jaxgpt.train.main([*argv, f"--out_dir={tmp_path / 'a'}"], command=True)  # tiny: freed memory kept
    monkeypatch.setattr(jaxgpt.train, "worth_keeping", lambda config: False)
    jaxgpt.train.main([*argv, f"--out_dir={tmp_path / 'b'}"])  # a library call of main: never
    with pytest.raises(Restarted):
        jaxgpt.train.main([*argv, f"--out_dir={tmp_path / 'c'}"], command=True)
