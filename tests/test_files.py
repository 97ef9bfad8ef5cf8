"""system/files.py: a destination is replaced whole or left as it was."""

from __future__ import annotations

import pytest

from jaxgpt.system.files import staged, write_text_atomically


def _write(path, kind: str, text: str) -> None:
    if kind == "file":
        path.write_text(text)
    else:
        path.mkdir()
        (path / "inside.txt").write_text(text)


def _read(path) -> str:
    return (path / "inside.txt").read_text() if path.is_dir() else path.read_text()


@pytest.mark.parametrize("old", ["none", "file", "dir"])
@pytest.mark.parametrize("new", ["file", "dir"])
def test_staged_replaces_whatever_was_there(tmp_path, old, new):
    out = tmp_path / "sub" / "out"
    if old != "none":
        out.parent.mkdir()
        _write(out, old, "old")
    with staged(out) as staging:
        assert staging.parent.parent == out.parent and not staging.exists()
        _write(staging, new, "new")
        assert _read(out) == "old" if old != "none" else not out.exists()  # nothing changes before the end
    assert _read(out) == "new" and out.is_dir() == (new == "dir")
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging left


@pytest.mark.parametrize("old", ["none", "file", "dir"])
def test_an_error_leaves_the_old_and_no_staging(tmp_path, old):
    out = tmp_path / "out"
    if old != "none":
        _write(out, old, "old")
    with pytest.raises(KeyboardInterrupt), staged(out) as staging:
        _write(staging, "dir", "half")
        raise KeyboardInterrupt
    assert (_read(out) == "old") if old != "none" else not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ([] if old == "none" else ["out"])


def test_write_text_atomically(tmp_path):
    path = tmp_path / "page.html"
    write_text_atomically(path, "one")
    write_text_atomically(path, "twö")
    assert path.read_text(encoding="utf-8") == "twö" and [p.name for p in tmp_path.iterdir()] == ["page.html"]
