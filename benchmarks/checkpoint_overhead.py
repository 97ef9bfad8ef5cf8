"""What an asynchronous checkpoint save costs the training loop, measured on this machine.

For the train state (params + AdamW moments) of each config: how long `save` blocks the loop (arrays copied
off the device) and how long until the files are complete. (Until commit bfe6248 this script also timed the
train step without its non-finite check, by patching a private function; benchmarks now use public API only,
and that measurement, +0.4-1.7% of a `small` step, is recorded in RESULTS.md.)

Usage:

    JAXGPT_DATA=path/to/input.txt python benchmarks/checkpoint_overhead.py
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

import jax

from jaxgpt.core.config import load_config
from jaxgpt.run.step import TrainState
from jaxgpt.run.training import Run
from jaxgpt.store.checkpoint import RunCheckpoints


def train_state(name: str, data_path: str | None, out_dir: str) -> TrainState:
    """The step-0 train state of config `name`, as `python -m jaxgpt.train` builds it."""
    config = dataclasses.replace(load_config(name), data_path=data_path, out_dir=out_dir, overwrite=True)
    with Run(config, log=lambda _: None) as run:
        return run.state


def save_times(state: TrainState, out_dir: str, repeats: int) -> tuple[float, float]:
    """Median (blocking seconds, seconds until complete) of `repeats` asynchronous saves of `state`."""
    blocking, complete = [], []
    with RunCheckpoints(out_dir, keep=2) as checkpoints:
        for step in range(1, repeats + 1):
            tic = time.perf_counter()
            checkpoints.save(step, state.params, state.opt_state, {"step": step})
            blocking.append(time.perf_counter() - tic)
            checkpoints.wait()
            complete.append(time.perf_counter() - tic)
    return statistics.median(blocking), statistics.median(complete)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("JAXGPT_DATA"), help="tiny Shakespeare input.txt")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="small,lecture",
                        help="configs whose state is saved (default: %(default)s)")
    args = parser.parse_args()
    print(f"date: {datetime.date.today()}  machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores  devices: {jax.devices()}  load: {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"\nasynchronous checkpoint save, median of {args.repeats}:")
    for name in args.configs.split(","):
        with tempfile.TemporaryDirectory() as run_dir, tempfile.TemporaryDirectory() as out_dir:
            state = train_state(name, args.data_path, run_dir)
            megabytes = sum(x.nbytes for x in jax.tree_util.tree_leaves((state.params, state.opt_state))) / 1e6
            blocking, complete = save_times(state, out_dir, args.repeats)
        print(f"  {name:<8} {megabytes:7.1f} MB  save blocks {blocking * 1e3:7.1f} ms, complete after "
              f"{complete * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
