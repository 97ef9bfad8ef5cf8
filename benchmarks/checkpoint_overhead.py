"""What checkpointing and divergence detection cost the training loop, measured on this machine.

1. The non-finite check inside the compiled train step: steps/s of the `small` train step as shipped vs the
   same step with the check compiled out, alternating runs, median of `--repeats`.
2. An asynchronous checkpoint save: how long `save` blocks the loop (arrays copied off the device) and how
   long until the files are complete, for the train state (params + AdamW moments) of `small` and `lecture`.

Usage:

    JAXGPT_DATA=../shared/data/tinyshakespeare/input.txt python benchmarks/checkpoint_overhead.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from unittest import mock

import jax
import jax.numpy as jnp

from jaxgpt import checkpoint, sharding
from jaxgpt import train as train_module
from jaxgpt.config import load_config
from jaxgpt.data import load_dataset


def setup(name: str, data_path: str | None):
    config = load_config(name)
    dataset = load_dataset(data_path, config.block_size)
    config = train_module.for_dataset(config, dataset)
    model, tx, placement, state = train_module.build_run(config, sharding.make_mesh(config.fsdp))
    return config, model, tx, placement, state, dataset


def steps_per_second(config, model, tx, placement, state, data, calls: int, check: bool) -> float:
    """Train steps per second over `calls` calls of the compiled step (each runs config.steps_per_call steps)."""
    patch = mock.patch.object(train_module, "all_finite", train_module.all_finite if check else
                              lambda tree: jnp.bool_(True))
    with patch:
        step_fn = train_module.make_train_step(config, model, tx, placement).lower(state, data).compile()
    state = jax.tree_util.tree_map(jnp.copy, state)  # the step donates its input
    state, _ = step_fn(state, data)  # warm up
    jax.block_until_ready(state)
    tic = time.perf_counter()
    for _ in range(calls):
        state, _ = step_fn(state, data)
    jax.block_until_ready(state)
    return calls * config.steps_per_call / (time.perf_counter() - tic)


def save_times(state, repeats: int) -> tuple[float, float]:
    """Median (blocking seconds, seconds until complete) of `repeats` asynchronous saves of `state`."""
    blocking, complete = [], []
    with tempfile.TemporaryDirectory() as out_dir, checkpoint.RunCheckpoints(out_dir, keep=2) as checkpoints:
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
    parser.add_argument("--calls", type=int, default=300, help="calls of the compiled step per throughput measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="small,lecture",
                        help="configs whose state is saved; the first one's train step is timed (default: %(default)s)")
    args = parser.parse_args()
    print(f"date: {datetime.date.today()}  machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores  devices: {jax.devices()}  load: {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join(sys.argv)}")

    names = args.configs.split(",")
    config, model, tx, placement, state, dataset = setup(names[0], args.data_path)
    data = placement.replicate(dataset.train)
    rates = {True: [], False: []}
    for _ in range(args.repeats):
        for check in (False, True):
            rates[check].append(steps_per_second(config, model, tx, placement, state, data, args.calls, check))
    with_check, without = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"\n{names[0]} train step ({config.steps_per_call} per call), median of {args.repeats} x {args.calls} calls:")
    print(f"  without the non-finite check {without:8.1f} train steps/s")
    extra = 100 * (without / with_check - 1)
    print(f"  with the non-finite check    {with_check:8.1f} train steps/s  ({extra:+.1f}% time)")

    print(f"\nasynchronous checkpoint save, median of {args.repeats}:")
    for name in names:
        state = setup(name, args.data_path)[4]
        megabytes = sum(x.nbytes for x in jax.tree_util.tree_leaves((state.params, state.opt_state))) / 1e6
        blocking, complete = save_times(state, args.repeats)
        print(f"  {name:<8} {megabytes:7.1f} MB  save blocks {blocking * 1e3:7.1f} ms, complete after "
              f"{complete * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
