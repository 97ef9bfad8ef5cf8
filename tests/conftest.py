"""Shared fixtures: tiny Shakespeare ($JAXGPT_DATA, else the user-cache copy, else one verified download) and a
small text file."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest_plugins = ["gpt2_standins"]  # the GPT-2 stand-ins' fixtures: hf, gpt2_data, gpt2_encoding


def pytest_configure(config) -> None:
    """One JAX compilation cache per test session (subprocesses included): the many runs of the same tiny
    model compile once. Set before jax is imported; the cache is deleted at exit."""
    cache = tempfile.mkdtemp(prefix="jaxgpt-test-jax-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """$JAXGPT_DATA if set, else the user-cache copy, downloaded once (sha256-verified) if missing."""
    from jaxgpt.data import resolve_data_path  # imported here: jax only after pytest_configure has run

    if os.environ.get("JAXGPT_DATA"):
        path = Path(os.environ["JAXGPT_DATA"]).expanduser()
        if not path.is_file():
            pytest.fail(f"JAXGPT_DATA points to {path}, which is not a file; set it to tiny Shakespeare's input.txt")
        return path
    try:
        return resolve_data_path(None)
    except Exception as err:  # offline with no cached copy: the one-line reason, not a traceback
        pytest.fail(f"no tiny Shakespeare for the tests: {err}", pytrace=False)


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path: Path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


@pytest.fixture
def small_text_file(tmp_path: Path, shakespeare_text: str) -> Path:
    """The first 20k characters of Shakespeare: enough for tiny configs, quick to encode."""
    path = tmp_path / "small.txt"
    path.write_text(shakespeare_text[:20_000], encoding="utf-8")
    return path
