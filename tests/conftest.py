"""Shared fixtures: the local tiny Shakespeare (never downloaded in tests) and a small text file."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def pytest_configure(config) -> None:
    """One JAX compilation cache per test session (subprocesses included): the many runs of the same tiny
    model compile once. Set before jax is imported; the cache is deleted at exit."""
    cache = tempfile.mkdtemp(prefix="jaxgpt-test-jax-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    path = Path(os.environ.get("JAXGPT_DATA") or SHARED_DATA)
    if not path.is_file():
        pytest.fail(f"tiny Shakespeare not found at {path}; set JAXGPT_DATA to input.txt")
    return path


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture
def small_text_file(tmp_path: Path, shakespeare_text: str) -> Path:
    """The first 20k characters of Shakespeare: enough for tiny configs, quick to encode."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path
