"""Shared fixtures: the local tiny Shakespeare (never downloaded in tests) and a small text file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


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
