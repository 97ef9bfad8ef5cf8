from __future__ import annotations

import subprocess
import sys

from jaxgpt.system import xla_flags


def test_the_cpu_flags_are_added_to_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert xla_flags.set_cpu_flags() == "--xla_dump_to=/tmp/x --xla_cpu_enable_concurrency_optimized_scheduler=false"
    assert xla_flags.set_cpu_flags() == "--xla_dump_to=/tmp/x --xla_cpu_enable_concurrency_optimized_scheduler=false"


def test_a_flag_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_concurrency_optimized_scheduler=true")
    assert xla_flags.set_cpu_flags() == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    monkeypatch.delenv("XLA_FLAGS")
    assert xla_flags.set_cpu_flags() == "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def test_this_jaxlib_knows_the_flags():
    """XLA aborts the process on a flag it does not know: the flags must exist in the installed jaxlib."""
    code = ("from jaxgpt.system import xla_flags; xla_flags.set_cpu_flags(); import jax, jax.numpy as jnp; "
            "print(float(jax.jit(lambda x: (x @ x).sum())(jnp.ones((4, 4)))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "64.0"
