"""Where prepare writes (jaxgpt.data.destination): one writer per --out, nothing replaced but a prepared dataset,
nothing left behind by a failure, a signal or a kill, and a symlinked --out."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxgpt.data import writer as prep
from jaxgpt.data.destination import Destination
from jaxgpt.data.prepared import open_prepared
from jaxgpt.data.writer import prepare
from jaxgpt.system.errors import UsageError


def quiet(*args, log=lambda _: None, **kwargs) -> dict:
    return prepare(*args, progress=False, log=log, **kwargs)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def big_text(tmp_path, shakespeare_text) -> Path:
    """About 45 MB: a prepare of it runs for seconds, long enough to stop it half-way."""
    path = tmp_path / "big.txt"
    path.write_text(shakespeare_text * 40, encoding="utf-8")
    return path


def start_prepare(text: Path, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxgpt.prepare", str(text), f"--out={out}", "--quiet", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(found, process: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while not (path := found()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "never appeared"
        time.sleep(0.005)
    return path


def test_a_second_prepare_into_the_same_out_is_refused_and_the_first_finishes(tmp_path, big_text):
    first = start_prepare(big_text, tmp_path / "data")
    lock = tmp_path / ".data.lock"  # its pid is written once the flock is held (the file alone comes first)
    wait_for(lambda: lock.exists() and lock.read_text() == f"{first.pid}\n", first)
    first.send_signal(signal.SIGSTOP)  # held in the middle of its work while the second one starts
    try:
        second = subprocess.run([sys.executable, "-m", "jaxgpt.prepare", str(big_text), f"--out={tmp_path / 'data'}",
                                 "--quiet", "--overwrite"], capture_output=True, text=True, timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    assert second.stderr == (f"error: --out '{tmp_path / 'data'}' is being written by another prepare (pid "
                             f"{first.pid}); wait for it to end or choose another directory\n")
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert open_prepared(tmp_path / "data").meta["train_bytes"] > 40_000_000
    assert listing(tmp_path) == ["big.txt", "data"]  # no lock, staging or old directory left


def test_sigterm_removes_the_partial_output_and_the_created_parents(tmp_path, big_text):
    """What `timeout` and schedulers send: the same cleanup as Ctrl-C, and exit status 143."""
    out = tmp_path / "new" / "nested" / "data"
    process = start_prepare(big_text, out)
    wait_for(lambda: next(out.parent.glob(".data.*.partial"), None), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM and stderr == "terminated\n", stderr
    assert listing(tmp_path) == ["big.txt"]  # new/nested, made by this prepare, went too


def test_stale_staging_directories_of_a_killed_prepare_are_removed_by_the_next(tmp_path, small_text_file):
    for name in (".data.0123abcd.partial", ".data.deadbeef.partial"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.bin").write_bytes(b"\0" * 10)
    (tmp_path / ".other.0123abcd.partial").mkdir()  # another --out's: not this prepare's to touch
    lines = []
    quiet([str(small_text_file)], tmp_path / "data", log=lines.append)
    assert lines == [f"removed 2 unfinished staging directories of an earlier prepare into {tmp_path / 'data'}"]
    assert listing(tmp_path) == [".other.0123abcd.partial", "data", "small.txt"]


def test_a_file_put_into_out_while_prepare_runs_is_never_deleted(tmp_path, small_text_file, monkeypatch):
    out = tmp_path / "data"

    def meanwhile(file, data):  # the user fills --out while the tokens are written
        out.mkdir(exist_ok=True)
        (out / "notes.txt").write_text("mine")
        file.write(data)

    monkeypatch.setattr(prep, "write_tokens", meanwhile)
    with pytest.raises(UsageError, match="is not empty; choose another directory or pass --overwrite"):
        quiet([str(small_text_file)], out)
    assert listing(out) == ["notes.txt"] and listing(tmp_path) == ["data", "small.txt"]


def test_a_file_put_into_a_dataset_while_overwrite_runs_is_never_deleted(tmp_path, small_text_file, monkeypatch):
    out = tmp_path / "data"
    before = quiet([str(small_text_file)], out)

    def meanwhile(file, data):
        (out / "notes.txt").write_text("mine")
        file.write(data)

    monkeypatch.setattr(prep, "write_tokens", meanwhile)
    with pytest.raises(UsageError, match=r"holds files that are not the prepared dataset's \(notes.txt\); "
                                         "--overwrite only replaces a prepared dataset"):
        quiet([str(small_text_file)], out, overwrite=True, dtype="uint32")
    assert (out / "notes.txt").read_text() == "mine" and open_prepared(out).meta == before


def test_a_directory_filled_between_the_check_and_the_rename_is_not_replaced(tmp_path, small_text_file,
                                                                               monkeypatch):
    """rename() refuses a non-empty target: the last moment is safe too."""
    out = tmp_path / "data"
    checks = []

    def check_then_fill(self):
        checks.append(1)
        if len(checks) == 2:  # commit's check passed; the user writes before the rename
            out.mkdir()
            (out / "notes.txt").write_text("mine")

    monkeypatch.setattr(Destination, "check", check_then_fill)
    with pytest.raises(UsageError, match="was filled by something else while prepare ran; nothing was replaced"):
        quiet([str(small_text_file)], out)
    assert listing(out) == ["notes.txt"] and listing(tmp_path) == ["data", "small.txt"]


def test_a_kill_between_the_two_renames_of_an_overwrite_is_rolled_back_by_the_next_prepare(tmp_path,
                                                                                        small_text_file):
    out = tmp_path / "data"
    old_meta = quiet([str(small_text_file)], out)
    os.rename(out, tmp_path / ".data.0123abcd.old")  # where the kill left it: the old one aside, no new one yet
    (tmp_path / ".data.89abcdef.partial").mkdir()
    lines = []
    with pytest.raises(UsageError, match="is not empty; choose another directory or pass --overwrite"):
        quiet([str(small_text_file)], out, dtype="uint32", log=lines.append)
    assert lines[-1] == f"an earlier prepare was stopped while it replaced {out}: put the previous dataset back"
    assert open_prepared(out).meta == old_meta and listing(tmp_path) == ["data", "small.txt"]


def test_a_kill_after_the_swap_leaves_an_old_dataset_that_the_next_prepare_removes(tmp_path, small_text_file):
    out = tmp_path / "data"
    quiet([str(small_text_file)], out)
    quiet([str(small_text_file)], tmp_path / ".data.0123abcd.old")  # the replaced dataset, not yet deleted
    lines = []
    quiet([str(small_text_file)], out, overwrite=True, log=lines.append)
    assert lines == [f"removed .data.0123abcd.old, the dataset an earlier prepare replaced in {out}"]
    assert listing(tmp_path) == ["data", "small.txt"]


def test_a_symlinked_out_writes_where_it_points_and_stays_a_link(tmp_path, small_text_file):
    quiet([str(small_text_file)], tmp_path / "store" / "v1")
    (tmp_path / "data").symlink_to(tmp_path / "store" / "v1")
    meta = quiet([str(small_text_file)], tmp_path / "data", overwrite=True, dtype="uint32")
    assert (tmp_path / "data").is_symlink() and os.readlink(tmp_path / "data") == str(tmp_path / "store" / "v1")
    assert open_prepared(tmp_path / "data").meta == meta and meta["dtype"] == "uint32"
    assert listing(tmp_path) == ["data", "small.txt", "store"] and listing(tmp_path / "store") == ["v1"]


@pytest.mark.parametrize("out, message", [
    ("afile/sub", r"cannot create --out '.*afile/sub': .*afile is a file; choose another directory"),
    ("afile/sub/data", r"cannot create --out '.*afile/sub/data': Not a directory \(.*afile/sub\); choose another"),
    ("afile", r"--out '.*afile' is a file; choose a directory"),
])
def test_a_destination_that_cannot_be_made_is_refused_before_reading(tmp_path, small_text_file, monkeypatch, out,
                                                                     message):
    (tmp_path / "afile").write_text("a file")
    monkeypatch.setattr(prep, "_scan", lambda *a: pytest.fail("read the inputs before checking --out"))
    with pytest.raises(UsageError, match=message):
        quiet([str(small_text_file)], tmp_path / out)
    assert listing(tmp_path) == ["afile", "small.txt"]


def test_a_parent_that_cannot_be_created_is_one_line(tmp_path, small_text_file, monkeypatch):
    """A read-only parent (root writes anywhere, so the refusal is simulated at mkdir)."""

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(UsageError, match=r"cannot create --out '.*ro/data': Permission denied \(.*ro\); choose"):
        quiet([str(small_text_file)], tmp_path / "ro" / "data")


def test_a_full_disk_on_a_nested_out_leaves_no_empty_parents(tmp_path, small_text_file, monkeypatch):
    def full(file, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prep, "write_tokens", full)
    with pytest.raises(UsageError, match="prepare failed: No space left on device; nothing was written"):
        quiet([str(small_text_file)], tmp_path / "a" / "b" / "data")
    assert listing(tmp_path) == ["small.txt"]


def test_the_lock_names_its_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    holder = rf"is being written by another prepare \(pid {os.getpid()}\)"
    with Destination(tmp_path / "data", overwrite=False, log=lambda _: None), pytest.raises(UsageError, match=holder):
        Destination(tmp_path / "data", overwrite=False).__enter__()
    assert listing(tmp_path) == []
    (tmp_path / ".data.lock").write_text("99999999\n")  # a holder killed with -9: its flock went with it
    with Destination(tmp_path / "data", overwrite=False, log=lambda _: None):
        assert json.loads((tmp_path / ".data.lock").read_text()) == os.getpid()
    assert listing(tmp_path) == []


def test_what_prepare_writes_is_never_an_input(tmp_path):
    with Destination(tmp_path / "corpus" / "data", overwrite=False, log=lambda _: None) as destination:
        assert destination.owns(tmp_path / "corpus" / "data" / "train.bin")
        assert destination.owns(tmp_path / "corpus" / ".data.lock")
        assert destination.owns(tmp_path / "corpus" / ".data.0123abcd.partial" / "val.bin")
        assert not destination.owns(tmp_path / "corpus" / "data2" / "a.txt")
        assert not destination.owns(tmp_path / "corpus" / ".data.notes")


def test_a_kill_9_between_the_renames_of_an_overwrite_is_rolled_back_by_the_next_prepare(tmp_path, small_text_file):
    """A real SIGKILL right after the old dataset was moved aside, before the new one is moved in."""
    out = tmp_path / "data"
    old_meta = quiet([str(small_text_file)], out)
    killer = ("import os, signal, sys\n"
              "rename = os.rename\n"
              "def rename_then_die(source, target):\n"
              "    rename(source, target)\n"
              "    if str(target).endswith('.old'):\n"
              "        os.kill(os.getpid(), signal.SIGKILL)\n"
              "os.rename = rename_then_die\n"
              "from jaxgpt.prepare import main\n"
              "main(sys.argv[1:])\n")
    killed = subprocess.run([sys.executable, "-c", killer, str(small_text_file), f"--out={out}", "--overwrite",
                             "--dtype=uint32", "--quiet"], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = listing(tmp_path)
    assert "data" not in left and any(name.endswith(".old") for name in left), left  # the dataset only in hiding
    again = subprocess.run([sys.executable, "-m", "jaxgpt.prepare", str(small_text_file), f"--out={out}",
                            "--overwrite", "--dtype=uint32"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"an earlier prepare was stopped while it replaced {out}: put the previous dataset back" in again.stderr
    assert open_prepared(out).meta["dtype"] == "uint32" != old_meta["dtype"]
    assert listing(tmp_path) == ["data", "small.txt"]


def test_an_input_appended_to_between_the_passes_is_refused(tmp_path, big_text):
    """The second pass (encoding) reads more than the first counted: refused, nothing written."""
    process = start_prepare(big_text, tmp_path / "data")
    wait_for(lambda: next(tmp_path.glob(".data.*.partial"), None), process)  # the first pass is over
    process.send_signal(signal.SIGSTOP)
    size = big_text.stat().st_size
    with open(big_text, "a", encoding="utf-8") as f:
        f.write("x" * 1_000_000 + "\n")
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert stderr == (f"error: {big_text} changed while prepare read it ({size:,} bytes, then {size + 1_000_001:,}); "
                      "prepare it again once nothing writes to it\n")
    assert listing(tmp_path) == ["big.txt"]


def test_a_file_put_into_out_while_a_prepare_process_runs_is_kept_and_the_prepare_refused(tmp_path, big_text):
    out = tmp_path / "data"
    process = start_prepare(big_text, out)
    wait_for(lambda: next(tmp_path.glob(".data.*.partial"), None), process)
    process.send_signal(signal.SIGSTOP)
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and stderr == (f"error: --out '{out}' is not empty; choose another directory or "
                                                  "pass --overwrite\n")
    assert listing(out) == ["notes.txt"] and listing(tmp_path) == ["big.txt", "data"]
