"""Quieting orbax's repeated reports of one failed checkpoint read or write (jaxgpt reports each failure once), and
its warnings about files that a running training deletes while another process reads them (jaxgpt retries)."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

_READ_FAILURE_MARKS = ("Event loop is closed", "_read_array_index", "Encountered error while reading array index")


def _is_read_failure_leftover(text: str) -> bool:
    return any(mark in text for mark in _READ_FAILURE_MARKS)


class _OrbaxFailureLogFilter(logging.Filter):
    """Drops orbax's own error reports (absl's log) and its background tasks' unretrieved exceptions (asyncio's
    log): jaxgpt reports each failure once, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _is_read_failure_leftover(message) or "exception was never retrieved" in message:
            return False
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


def quiet_checkpoint_failures() -> None:
    """When orbax fails to write (a full disk) or read (a damaged checkpoint), its background threads and
    abandoned concurrent reads report it again and again: in absl's and asyncio's logs, at garbage collection
    ("Event loop is closed", "exception was never retrieved", "never awaited"), pages of tracebacks at any later
    time. jaxgpt reports the failure once, so a command drops exactly these; everything else still reaches the
    previous hook and logs. Process-wide: the commands call it (`jaxgpt.cli.run_cli`), library calls do not."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_failed_read_leftovers", False):
        return  # installed by an earlier command in this process

    def hook(unraisable) -> None:
        if not _is_read_failure_leftover(f"{unraisable.exc_value} {unraisable.object!r}"):
            previous(unraisable)

    hook.drops_failed_read_leftovers = True
    sys.unraisablehook = hook
    for name in ("asyncio", "absl"):
        logging.getLogger(name).addFilter(_OrbaxFailureLogFilter())
    for coroutine in ("_read_array_index", "async_serialize_from_host"):  # an abandoned read; a failed write
        warnings.filterwarnings("ignore", message=f"coroutine '{coroutine}", category=RuntimeWarning)


# What orbax says when a checkpoint step is deleted (a newer one replaced it) while it is being read.
_VANISHING_MARKS = ("Metadata file does not exist", "was found in the checkpoint, but could not be restored")


class _VanishingFileFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(mark in record.getMessage() for mark in _VANISHING_MARKS)


@contextlib.contextmanager
def quiet_vanishing_checkpoints() -> Iterator[None]:
    """Within the block, drop orbax's warnings about checkpoint files that disappear while read: reading a run
    that is still training races with its deletion of old steps, and the reader (jaxgpt.store.checkpoint) tries
    again with the newer step; a read that fails for good is reported by jaxgpt."""
    log_filter = _VanishingFileFilter()
    logging.getLogger("absl").addFilter(log_filter)
    try:
        yield
    finally:
        logging.getLogger("absl").removeFilter(log_filter)
