"""The glibc settings that let XLA:CPU reuse its buffers between calls (jaxgpt/allocator.py)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys

import pytest

FAULTS_PER_CALL = """
import resource, sys
if sys.argv[1] == "keep":
    from jaxgpt.allocator import keep_freed_memory
    assert keep_freed_memory()
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


def test_glibc_tunables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    from jaxgpt.allocator import keep_freed_memory

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert not keep_freed_memory()
