"""A run killed with SIGKILL at any moment and resumed ends exactly where an uninterrupted run ends.

A `small`-sized run is killed at 5 moments drawn from a seed (after a step, while a checkpoint is being written,
in the middle of a metrics record, while resuming, and from outside at a random time), resumed with `--resume`
after each, and its final metrics and parameters are compared with a straight run's, bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jaxgpt.store import checkpoint
from jaxgpt.store.rundir import RunDir

HERE = Path(__file__).resolve().parent
SEED = 20261201
MAX_ITERS, INTERVAL = 80, 10  # small runs 10 steps per compiled call: moments fall on multiples of 10
FLAGS = ["--config=small", f"--max_iters={MAX_ITERS}", f"--eval_interval={INTERVAL}",
         f"--checkpoint_interval={INTERVAL}", "--eval_iters=4", "--keep_checkpoints=2", "--progress=false",
         "--sample_chars=0"]


def train(out_dir: Path, data: Path, *extra: str, crash: tuple[str, int] | None = None) -> subprocess.Popen:
    script = [str(HERE / "crash_run.py"), crash[0], str(crash[1])] if crash else ["-m", "jaxgpt.train"]
    env = {**os.environ, "JAXGPT_DATA": str(data)}
    return subprocess.Popen([sys.executable, *script, *FLAGS, f"--out_dir={out_dir}", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def losses(out_dir: Path) -> list[tuple]:
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in RunDir(out_dir).read_metrics()]


def test_killed_five_times_and_resumed_equals_a_straight_run(tmp_path, small_text_file):
    code, stderr = finish(train(tmp_path / "straight", small_text_file))
    assert code == 0, stderr

    # Three in-run moments at increasing steps (each resumed run gets past the previous one), a kill while
    # resuming (never first: it needs a checkpoint), and a kill from outside at a seeded time.
    rng = random.Random(SEED)
    in_run = ["step", "save", "metrics"]
    rng.shuffle(in_run)
    steps = sorted(rng.sample(range(INTERVAL, MAX_ITERS, INTERVAL), 3))
    moments = list(zip(in_run, steps, strict=True))
    moments.insert(rng.randint(1, 3), ("restore", 0))
    moments.append(("outside", rng.uniform(0.0, 1.0)))
    run, started, log = tmp_path / "killed", False, []
    for moment, at in moments:
        resume = ["--resume"] if (run / "checkpoints").is_dir() else ["--overwrite"] if started else []
        if moment == "outside":
            process = train(run, small_text_file, *resume)
            time.sleep(at + 3.0)  # about the end of start-up (imports, compiling), then a seeded moment
            process.send_signal(signal.SIGKILL)
        else:
            process = train(run, small_text_file, *resume, crash=(moment, at))
        code, stderr = finish(process)
        started = True
        log.append((moment, at, code, stderr.strip().splitlines()[-1:] if stderr.strip() else []))
        assert code in (0, -signal.SIGKILL), log  # killed, or finished before the moment came

    resume = ["--resume"] if (run / "checkpoints").is_dir() else ["--overwrite"]
    code, stderr = finish(train(run, small_text_file, *resume))
    assert code == 0, (stderr, log)
    assert losses(run) == losses(tmp_path / "straight"), log
    _, params, _ = checkpoint.load(run)
    _, reference, _ = checkpoint.load(tmp_path / "straight")
    for a, b in zip(_leaves(params), _leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list(run.rglob("*.orbax-checkpoint-tmp*")), "a killed save's temporary files were left behind"
    killed = [entry for entry in log if entry[2] == -signal.SIGKILL]
    assert len(killed) >= 4, log  # the moments really interrupted the runs


def _leaves(params):
    import jax

    return (np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params))
