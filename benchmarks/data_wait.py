"""How long training steps wait for host-gathered batches (a prepared dataset, memory-mapped), per loader.

    python benchmarks/data_wait.py [--data_path=DATA_DIR|TEXT] [--sizes=small,lecture] [--loaders=thread[,grain]]
                                   [--steps=small:300,lecture:8]

For each size (a config name) and loader, trains `--steps` steps from DATA_DIR (a text file, by default tiny
Shakespeare, is prepared with the char tokenizer into a temporary directory first) in this process and reports the
time the steps waited for their windows, as a share of the training time (`data_wait` of the evaluation at the
end; the target is at most 5%) and in milliseconds per step. Loaders: `thread` is jaxgpt.data.batches.HostBatches (a
background thread prepares the next calls' windows); `grain` gathers the same windows through grain's MapDataset
with its own prefetch thread, to decide between them (`pip install grain` first; jaxgpt does not depend on it,
see RESULTS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from jaxgpt.system.allocator import keep_freed_memory

keep_freed_memory()  # as the command lines do, before JAX starts its threads

import jax  # noqa: E402

import jaxgpt.run.training as train_module  # noqa: E402
from jaxgpt.core.config import load_config  # noqa: E402
from jaxgpt.data import batches as loader  # noqa: E402
from jaxgpt.data.text import resolve_data_path  # noqa: E402
from jaxgpt.data.writer import prepare  # noqa: E402
from jaxgpt.run.training import Run  # noqa: E402


class GrainBatches(loader.HostBatches):
    """HostBatches whose training windows come through grain (same windows, grain's prefetch thread)."""

    def train_windows(self, first_step: int, steps: int) -> jax.Array:
        import grain

        if getattr(self, "_next", None) != (first_step, steps):
            calls = grain.MapDataset.range(first_step, self.config.max_iters, steps)
            windows = calls.map(lambda step: self._load_train(step, steps))
            read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=loader.PREFETCH_CALLS)
            self._iterator = iter(windows.to_iter_dataset(read))
        started = time.perf_counter()
        windows = next(self._iterator)
        self.wait_seconds += time.perf_counter() - started
        self._next = (first_step + steps, steps)
        return windows


def measure(size: str, loader_name: str, data_path: str, steps: int) -> tuple[float, float, float]:
    """(data wait as a share of training time, its milliseconds per step, milliseconds per step)."""
    with tempfile.TemporaryDirectory() as out_dir:
        config = dataclasses.replace(load_config(size), data_path=data_path, out_dir=out_dir, max_iters=steps,
                                     eval_interval=steps, eval_iters=2, eval_at_start=False, progress=False,
                                     sample_chars=0, checkpoint_interval=10 * steps)
        train_module.HostBatches = GrainBatches if loader_name == "grain" else loader.HostBatches  # what Run builds
        try:
            with Run(config, log=lambda _: None) as run:
                run.compile()
                run.host_batches.wait_seconds = 0.0
                started = time.perf_counter()
                for _ in range(steps // run.steps_per_call):
                    run.step()
                jax.block_until_ready(run.state)
                seconds = time.perf_counter() - started
                waited = run.host_batches.wait_seconds
        finally:
            train_module.HostBatches = loader.HostBatches
    return waited / seconds, 1e3 * waited / steps, 1e3 * seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", help="a dataset directory from python -m jaxgpt.prepare, or a text file")
    parser.add_argument("--sizes", default="small,lecture")
    parser.add_argument("--loaders", default="thread", help="thread, grain or both: thread,grain")
    parser.add_argument("--steps", default="small:300,lecture:8", help="steps per size, SIZE:N,...")
    args = parser.parse_args()
    steps = {name: int(n) for name, n in (item.split(":") for item in args.steps.split(","))}
    with tempfile.TemporaryDirectory() as work:
        data_path = resolve_data_path(args.data_path)
        if data_path.is_file():
            prepare([str(data_path)], Path(work) / "data", progress=False, log=lambda _: None)
            data_path = Path(work) / "data"
        print(f"data: {data_path}  date: {time.strftime('%Y-%m-%d %H:%M')}")
        print(f"{'size':8} {'loader':7} {'steps':>5} {'ms/step':>9} {'wait ms/step':>13} {'wait share':>11}")
        for size in args.sizes.split(","):
            for loader_name in args.loaders.split(","):
                share, wait_ms, step_ms = measure(size, loader_name, str(data_path), steps[size])
                print(f"{size:8} {loader_name:7} {steps[size]:5d} {step_ms:9.1f} {wait_ms:13.2f} {share:11.2%}",
                      flush=True)


if __name__ == "__main__":
    main()
