"""Batches gathered on the host, for token arrays too big for the devices (a prepared dataset, memory-mapped).

The windows are the ones the on-device path draws (`data.train_offsets`, `data.eval_offsets`: the same keys, the
same offsets), so switching paths changes no result. Each process gathers only the rows of the global batch that
its own devices hold (`jax.make_array_from_callback`), and a background thread prepares the next calls' windows
while the current call trains, so the step does not wait for the disk.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import Future, ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxgpt.config import TrainConfig
from jaxgpt.data import eval_offsets, gather_windows, train_offsets
from jaxgpt.sharding import Placement

PREFETCH_CALLS = 2  # compiled calls whose windows are prepared ahead of the one training


def place_windows(tokens: np.ndarray, offsets: np.ndarray, block_size: int, sharding: NamedSharding) -> jax.Array:
    """The windows (*offsets.shape, T + 1) int32 of the host tokens (N,) at `offsets`, as one global array with
    `sharding`: each device's rows are gathered for it alone, so a process reads only its own rows."""

    def rows(index: tuple[slice, ...]) -> np.ndarray:
        return gather_windows(tokens, offsets[index[:-1]], block_size)[..., index[-1]].astype(np.int32)

    return jax.make_array_from_callback((*offsets.shape, block_size + 1), sharding, rows)


class HostBatches:
    """The training and evaluation windows of one run, gathered from host token arrays (numpy or np.memmap)."""

    def __init__(self, config: TrainConfig, placement: Placement, train: np.ndarray, val: np.ndarray):
        self.config, self.placement = config, placement
        self.splits = {"train": train, "val": val}
        cpu = jax.local_devices(backend="cpu")[0]  # offsets are a few integers: no trip to an accelerator
        self._to_cpu = functools.partial(jax.device_put, device=cpu)
        self._train_offsets = jax.jit(train_offsets, static_argnums=(0, 2, 3, 4, 5))
        self._eval_offsets = jax.jit(eval_offsets, static_argnums=(1, 2, 3, 4))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxgpt-batches")
        self._ahead: dict[tuple[int, int], Future] = {}
        self.wait_seconds = 0.0  # time `train_windows` waited for windows not ready yet

    def _load_train(self, first_step: int, steps: int) -> jax.Array:
        c, tokens = self.config, self.splits["train"]
        step_numbers = self._to_cpu(np.arange(first_step, first_step + steps, dtype=np.int32))
        offsets = np.asarray(self._train_offsets(c.seed, step_numbers, len(tokens), c.grad_accum, c.batch_size,
                                                 c.block_size))  # (K, A, B)
        return place_windows(tokens, offsets, c.block_size, self.placement.batch_along(2))

    def prefetch(self, first_step: int, steps: int) -> None:
        """Start gathering the windows of the call of `steps` steps from `first_step` and of the PREFETCH_CALLS
        calls after it (within max_iters), unless under way; what was under way for other calls is dropped (the
        first call, or a resume)."""
        if (first_step, steps) not in self._ahead:
            self._drop_ahead()
            self._ahead[first_step, steps] = self._pool.submit(self._load_train, first_step, steps)
        for call in range(1, PREFETCH_CALLS + 1):
            ahead = (first_step + call * steps, steps)
            if ahead[0] + steps <= self.config.max_iters and ahead not in self._ahead:
                self._ahead[ahead] = self._pool.submit(self._load_train, *ahead)

    def train_windows(self, first_step: int, steps: int) -> jax.Array:
        """The windows (K, A, B, T + 1) of the K = `steps` training steps from `first_step`; the next calls'
        windows are gathered in the background meanwhile."""
        self.prefetch(first_step, steps)
        future = self._ahead.pop((first_step, steps))
        started = time.perf_counter()
        windows = future.result()
        self.wait_seconds += time.perf_counter() - started
        return windows

    def eval_windows(self, split: str, key: jax.Array) -> jax.Array:
        """The (eval_iters, B, T + 1) random windows of a loss estimate of `split` ("train" or "val")."""
        c, tokens = self.config, self.splits[split]
        offsets = np.asarray(self._eval_offsets(self._to_cpu(key), len(tokens), c.eval_iters, c.batch_size,
                                                c.block_size))  # (eval_iters, B)
        return place_windows(tokens, offsets, c.block_size, self.placement.batch_along(1))

    def _drop_ahead(self) -> None:
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()

    def close(self) -> None:
        """Stop preparing windows (waits for the one being gathered)."""
        self._drop_ahead()
        self._pool.shutdown(wait=True)
