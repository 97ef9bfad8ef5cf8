"""The profiler window (`--profile=START:STOP`): a `jax.profiler` trace of a stretch of training steps, written to
the run directory's profile/ for TensorBoard's profile plugin or Perfetto (docs/tracking.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax


class ProfileWindow:
    """Traces the compiled calls that run steps START .. STOP - 1. With several steps per call the trace covers
    whole calls: from the one holding START to the one holding STOP - 1. The window is traced once: a resumed
    run that starts past START traces only what is left of it."""

    def __init__(self, window: str, directory: Path, log: Callable[[str], None]):
        start, _, stop = window.partition(":")
        self.start, self.stop = (int(start), int(stop)) if window else (0, 0)
        self.directory, self._log = directory, log
        self._tracing = False

    def before_call(self, first_step: int, steps: int) -> None:
        """Start tracing if the call about to run steps first_step .. first_step + steps - 1 is in the window."""
        if not self._tracing and first_step < self.stop and first_step + steps > self.start:
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self._tracing, self._first = True, first_step

    def run(self, first_step: int, call: Callable[[], jax.Array]) -> jax.Array:
        """`call()`, the compiled call running steps from `first_step`; while tracing, inside a step marker that
        XProf's overview takes the step time from, and waited for, so that the marker spans its execution."""
        if not self._tracing:
            return call()
        with jax.profiler.StepTraceAnnotation("train", step_num=first_step):
            return jax.block_until_ready(call())

    def after_call(self, steps_done: int, state) -> None:
        """Stop once the window's last step has run (waiting for the device, so the trace holds it)."""
        if self._tracing and steps_done >= self.stop:
            jax.block_until_ready(state)
            self.close(steps_done)

    def close(self, steps_done: int) -> None:
        """Stop a trace still running (the run ended or stopped inside the window)."""
        if self._tracing:
            jax.profiler.stop_trace()
            self._tracing = False
            self._log(f"profile of steps {self._first} to {steps_done - 1} written to {self.directory} "
                      f"(tensorboard --logdir {self.directory}, or open its perfetto_trace.json.gz in ui.perfetto.dev)")
