"""Where `prepare` writes: one writer per `--out` at a time, nothing replaced but a prepared dataset, and a
directory that appears complete or not at all.

The dataset is written into a hidden staging directory beside `--out` and renamed into place at the end. A lock
beside `--out` (`.NAME.lock`, flock) refuses a second writer. `--overwrite` swaps a prepared dataset out through
a hidden `.NAME.XXXXXXXX.old`; a writer killed between the two renames leaves the old dataset there, and the next
`prepare` into `--out` puts it back (or finishes removing it) and says so. A symlinked `--out` writes where the
link points; the link is kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from jaxgpt.data.prepared import DATASET_FILES, META
from jaxgpt.system.errors import UsageError


class Destination:
    """The `--out` of one prepare, as a context manager: entering checks and locks it (before any input is
    read), `staging()` gives the directory to write, `commit()` moves it into place; leaving without a commit
    removes what this prepare made (its staging directory, the parents it created)."""

    def __init__(self, out: str | os.PathLike, overwrite: bool, log: Callable[[str], None] = print):
        self.shown = str(out)  # as the user gave it, for messages
        self.out = Path(out).expanduser().absolute()
        if self.out.is_symlink():
            self.out = self.out.resolve()
        self.overwrite, self.log = overwrite, log
        self.lock_path = self.out.with_name(f".{self.out.name}.lock")
        self._hidden = re.compile(rf"\.{re.escape(self.out.name)}\.(?:[0-9a-f]{{8}}\.(?:partial|old)|lock)")
        self._created: list[Path] = []
        self._lock: int | None = None
        self._staging: Path | None = None
        self._committed = False

    # -- entering -----------------------------------------------------------------------------------------

    def __enter__(self) -> Destination:
        try:
            self._make_parents()
            self._take_lock()
            self._recover()
            self.check()
        except BaseException:
            self._leave()
            raise
        return self

    def _make_parents(self) -> None:
        missing = [p for p in [self.out.parent, *self.out.parent.parents] if not p.exists()][::-1]
        for parent in missing:
            try:
                parent.mkdir()
            except FileExistsError:  # made meanwhile, or a dangling link
                continue
            except OSError as err:
                raise UsageError(f"cannot create --out {self.shown!r}: {err.strerror} ({parent}); choose another "
                                 "directory") from None
            self._created.append(parent)
        if not self.out.parent.is_dir():
            blocker = next(p for p in [self.out.parent, *self.out.parent.parents] if p.exists())
            raise UsageError(f"cannot create --out {self.shown!r}: {blocker} is a file; choose another directory")
        if not os.access(self.out.parent, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write --out {self.shown!r}: {self.out.parent} is not writable; choose another "
                             "directory")

    def _take_lock(self) -> None:
        """An exclusive flock on `.NAME.lock` beside `--out`; a lock file unlinked by its holder while this one
        waited for it is taken again."""
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise UsageError(f"--out {self.shown!r} is being written by another prepare{holder}; wait for it to "
                                 "end or choose another directory") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock = fd
                return
            os.close(fd)

    def _recover(self) -> None:
        """Clean up after a prepare that was killed: its staging directories, and an interrupted swap."""
        hidden = [path for path in self.out.parent.iterdir() if self._hidden.fullmatch(path.name)]
        partials = [path for path in hidden if path.name.endswith(".partial")]
        olds = sorted((path for path in hidden if path.name.endswith(".old")), key=lambda p: p.stat().st_mtime)
        for partial in partials:
            shutil.rmtree(partial, ignore_errors=True)
        if partials:
            self.log(f"removed {len(partials)} unfinished staging director{'y' if len(partials) == 1 else 'ies'} "
                     f"of an earlier prepare into {self.shown}")
        if olds and not self.out.exists():
            olds.pop().rename(self.out)
            self.log(f"an earlier prepare was stopped while it replaced {self.shown}: put the previous dataset back")
        for old in olds:
            _remove_dataset(old, self.log)
            self.log(f"removed {old.name}, the dataset an earlier prepare replaced in {self.shown}")

    def check(self) -> None:
        """`--out` may be missing or empty, or, with --overwrite, hold a prepared dataset and nothing else."""
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.shown!r} is a file; choose a directory")
        names = sorted(p.name for p in self.out.iterdir()) if self.out.is_dir() else []
        if not names:
            return
        if not self.overwrite:
            raise UsageError(f"--out {self.shown!r} is not empty; choose another directory or pass --overwrite")
        if META not in names:
            raise UsageError(f"--out {self.shown!r} holds files but no prepared dataset; --overwrite only replaces a "
                             "prepared dataset, so choose another directory")
        self._refuse_foreign(names)

    def _refuse_foreign(self, names: list[str]) -> None:
        if foreign := [name for name in names if name not in DATASET_FILES]:
            raise UsageError(f"--out {self.shown!r} holds files that are not the prepared dataset's "
                             f"({', '.join(foreign[:3])}); --overwrite only replaces a prepared dataset: move them "
                             "or choose another directory")

    # -- writing --------------------------------------------------------------------------------------------

    def owns(self, path: Path) -> bool:
        """Whether `path` is `--out`, inside it, or one of the hidden files beside it that prepare writes: never
        an input."""
        resolved = path.resolve()
        if resolved == self.out or self.out in resolved.parents:
            return True
        return any(part.parent == self.out.parent and self._hidden.fullmatch(part.name)
                   for part in [resolved, *resolved.parents])

    def staging(self) -> Path:
        """A new hidden directory beside `--out` to write the dataset into."""
        self._staging = self.out.with_name(f".{self.out.name}.{secrets.token_hex(4)}.partial")
        self._staging.mkdir()
        return self._staging

    def commit(self) -> None:
        """Move the finished staging directory to `--out`: checked again first, and renamed so that a directory
        filled meanwhile is never replaced (rename refuses a non-empty target; a dataset moved aside is looked at
        once more where nobody else writes to it)."""
        assert self._staging is not None
        self.check()
        old = None
        if (self.out / META).is_file():  # --overwrite of a prepared dataset (check() allowed nothing else)
            old = self.out.with_name(f".{self.out.name}.{secrets.token_hex(4)}.old")
            os.rename(self.out, old)
            try:
                self._refuse_foreign(sorted(p.name for p in old.iterdir()))
            except UsageError:
                os.rename(old, self.out)
                raise
        try:
            os.rename(self._staging, self.out)
        except OSError as err:
            if old is not None:
                os.rename(old, self.out)
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise UsageError(f"--out {self.shown!r} was filled by something else while prepare ran; nothing "
                                 "was replaced and the new dataset was not kept: choose another directory") from None
            raise
        self._committed = True
        if old is not None:
            _remove_dataset(old, self.log)

    # -- leaving --------------------------------------------------------------------------------------------

    def __exit__(self, *exc_info) -> None:
        self._leave()

    def _leave(self) -> None:
        if not self._committed and self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)  # before releasing: a waiter then sees another inode and retries
            os.close(self._lock)
            self._lock = None
        if not self._committed:
            for parent in reversed(self._created):
                with contextlib.suppress(OSError):
                    parent.rmdir()


def _read_pid(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(os.pread(fd, 32, 0).decode())})"
    return ""


def _remove_dataset(old: Path, log: Callable[[str], None] = print) -> None:
    """Delete a replaced dataset file by file: a directory holding anything else is kept, and named."""
    for name in DATASET_FILES:
        with contextlib.suppress(FileNotFoundError):
            (old / name).unlink()
    try:
        old.rmdir()
    except OSError:
        log(f"warning: kept {old}: it holds files that are not a prepared dataset's")
