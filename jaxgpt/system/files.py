"""Files written whole or not at all: what a reader finds is the old file or the new one, never a half.

Everything jaxgpt writes for others to read (a page, an exported model, a run's config and metrics, a downloaded
text) is written at a staging path beside its destination and renamed over it when complete; an error or an
interrupt leaves the old one and removes the staging path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged(out: str | os.PathLike) -> Iterator[Path]:
    """A path beside `out`, not yet existing, to write the new `out` at (a file or a directory). When the block ends
    without an error it replaces `out`, whatever was there; otherwise it is removed and `out` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # same filesystem: the rename is atomic
    staging = folder / out.name
    try:
        yield staging
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)  # a directory cannot be renamed over: the old one goes first
        elif staging.is_dir() and out.exists():
            out.unlink()
        os.replace(staging, out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` whole or not at all (see `staged`)."""
    with staged(path) as staging:
        staging.write_text(text, encoding="utf-8")
