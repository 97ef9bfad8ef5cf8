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
# Everything runs on the CPU. With the accelerator extras installed (CI installs them: tests/test_targets.py,
# tests/test_compile_check.py), JAX would start their plugins too, which print errors without the hardware. Set
# before jax is imported (the stand-ins below import it).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
pytest_plugins = ["gpt2_standins"]  # the GPT-2 stand-ins' fixtures: hf, gpt2_data, gpt2_encoding


def pytest_configure(config) -> None:
    """One JAX compilation cache per test session (subprocesses included): the many runs of the same tiny
    model compile once. Set before jax is imported; the cache is deleted at exit."""
    cache = tempfile.mkdtemp(prefix="jaxgpt-test-jax-cache-")
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# The slowest test files, slowest first (seconds in one whole run, benchmarks/RESULTS.md "CI time"). pytest-xdist
# hands whole files to the workers in collection order, so with these first the last files to start are short ones
# and the workers finish together (simulated on measured times: 871 s against 928 s in alphabetical order).
SLOWEST_FILES_FIRST = ["test_benchmarks.py", "test_train.py", "test_modern.py", "test_rundir.py", "test_checkpoint.py",
                       "test_loader.py", "test_docs.py", "test_notebooks.py", "test_parity.py", "test_rolling_cache.py",
                       "test_sample_cli.py", "test_sample.py", "test_pretrained.py", "test_chaos.py",
                       "test_precision.py", "test_sharding.py", "test_compile_cache.py", "test_allocator.py",
                       "test_convert.py", "test_bad_inputs.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: the other files keep their order


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """$JAXGPT_DATA if set, else the user-cache copy, downloaded once (sha256-verified) if missing."""
    from jaxgpt.data.text import resolve_data_path  # imported here: jax only after pytest_configure has run

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
