"""The command-line tools' persistent compilation cache: where it goes, and JAX's own settings winning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
from jaxgpt.system import compile_cache
compile_cache.enable_default()
import jax
jax.jit(lambda x: x * 2 + 1)(3.0).block_until_ready()
print(jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size)
"""


def run_probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    clean.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu",
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=clean, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def cached_programs(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith("jit_")] if directory.is_dir() else []


def test_caches_compiled_programs_in_the_users_cache_dir(tmp_path):
    result = run_probe(tmp_path)
    default = tmp_path / "xdg" / "jaxgpt" / "jax_compilation_cache"
    assert result.stdout.split() == [str(default), str(1 << 30)]
    assert cached_programs(default)


@pytest.mark.parametrize("setting", ["dir", "off"])
def test_jax_settings_win(tmp_path, setting):
    own = tmp_path / "own"
    env = {"JAX_COMPILATION_CACHE_DIR": str(own)} if setting == "dir" else {"JAX_ENABLE_COMPILATION_CACHE": "false"}
    result = run_probe(tmp_path, **env)
    assert not (tmp_path / "xdg").exists()
    if setting == "dir":
        assert result.stdout.split() == [str(own), "-1"] and cached_programs(own)


def test_the_sample_cli_uses_it(tmp_path, small_text_file):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    clean.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu",
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out_dir = tmp_path / "run"
    train = [sys.executable, "-m", "jaxgpt.train", "--config=tiny", "--max_iters=2", "--eval_interval=2",
             "--eval_iters=1", "--sample_chars=0", "--progress=false", f"--data_path={small_text_file}",
             f"--out_dir={out_dir}"]
    sample = [sys.executable, "-m", "jaxgpt.sample", f"--out_dir={out_dir}", "--max_new_tokens=5"]
    for argv, env in ((train, os.environ), (sample, clean)):  # the run is made with the tests' own cache
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr
    programs = cached_programs(tmp_path / "xdg" / "jaxgpt" / "jax_compilation_cache")
    assert any(name.startswith("jit_generate_cached") for name in programs)


@pytest.mark.parametrize("env, expected", [({}, "0.1"), ({"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}, "2.0")])
def test_programs_of_a_tenth_of_a_second_are_kept_unless_jax_is_told_otherwise(tmp_path, env, expected):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    clean.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu", **env)
    probe = ("from jaxgpt.system import compile_cache; compile_cache.enable_default(); import jax; "
             "print(float(jax.config.jax_persistent_cache_min_compile_time_secs))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=clean, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected]
