"""Stopping cleanly on SIGINT (Ctrl-C) or SIGTERM (preemption, `timeout`, schedulers). A run finishes the step,
saves, then exits (`stop_on_signals`); a command with nothing to save stops where it is, its cleanup running as
for Ctrl-C (`terminate_as_interrupt`).

The signal handler only records the request; the training loop looks at it after each step. A second
signal stops at once (KeyboardInterrupt) without waiting for the checkpoint. In a multi-process run all
processes must stop after the same step (the checkpoint is written by all of them), so they agree on it
every `AGREE_EVERY` steps with one tiny all-gather.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
from collections.abc import Iterator

import jax
import numpy as np

AGREE_EVERY = 50  # steps between the processes' agreement on stopping (multi-process runs only)


@dataclasses.dataclass
class StopRequest:
    """Set by the signal handler; `signum` is the signal that asked the run to stop, if any."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def agreed(self, step: int) -> bool:
        """Stop after `step`? At once with one process; with several, when any asked at an agreement step."""
        if jax.process_count() == 1:
            return self.requested
        if step % AGREE_EVERY:
            return False
        from jax.experimental import multihost_utils

        return bool(multihost_utils.process_allgather(np.asarray(self.requested)).any())

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 128 + its number (130 for SIGINT)."""
        return 128 + (self.signum or signal.SIGTERM)  # stopped because another process was signalled


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[StopRequest]:
    """Within the block, the first of `signums` sets the returned StopRequest; the previous handlers come back
    on exit. Install it only in a command-line main: handlers belong to the whole process."""
    request = StopRequest()

    def handler(signum: int, frame) -> None:
        if request.requested:
            raise KeyboardInterrupt
        request.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step to save a checkpoint "
              "(send it again to quit without saving)", file=sys.stderr, flush=True)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, as Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`, so `finally` blocks and context managers clean up as they do
    for Ctrl-C (Python's default for SIGTERM skips them). For command-line mains only."""

    def handler(signum: int, frame) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
