"""`python -m jaxgpt.train` that kills itself with SIGKILL at a chosen moment, for the chaos tests.

    python tests/crash_run.py MOMENT STEP [train flags ...]

MOMENT is where the process dies, at training step STEP:
- `step`: right after the compiled call that reaches STEP (before its evaluation or checkpoint);
- `save`: right after the checkpoint of STEP was started, while its files are being written in the background;
- `metrics`: in the middle of writing the metrics record of STEP (half of the line is on disk);
- `restore`: while resuming, after the checkpoint was read and before training goes on.
"""

from __future__ import annotations

import os
import signal
import sys

from jaxgpt.cli import run_cli
from jaxgpt.run import training as train
from jaxgpt.store import checkpoint, rundir
from jaxgpt.train import main


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(moment: str, at: int) -> None:
    if moment == "step":
        original_step = train.Run.step

        def step(self):
            loss = original_step(self)
            if self.step_count >= at:
                die()
            return loss

        train.Run.step = step
    elif moment == "save":
        original_save = checkpoint.RunCheckpoints.save

        def save(self, step, *args, **kwargs):
            original_save(self, step, *args, **kwargs)
            if step == at:
                die()

        checkpoint.RunCheckpoints.save = save
    elif moment == "metrics":
        original_append = rundir.RunDir.append_metrics

        def append_metrics(self, record):
            if record["step"] == at:
                with open(self.metrics_file, "a", encoding="utf-8") as f:
                    f.write(f'{{"step": {at}, "train_lo')
                die()
            original_append(self, record)

        rundir.RunDir.append_metrics = append_metrics
    elif moment == "restore":
        original_restore = train.Run.restore

        def restore(self):
            original_restore(self)
            die()

        train.Run.restore = restore
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    arm(sys.argv[1], int(sys.argv[2]))
    run_cli(main, sys.argv[3:])
