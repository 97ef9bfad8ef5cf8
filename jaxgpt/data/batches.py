"""Batches: the windows of tokens a run trains and evaluates on, and where they are gathered.

Every window derives from the step's keys (`train_offsets`, `eval_offsets`), so the two implementations of
`Batches` give the same windows: `DeviceBatches` keeps the splits on the devices and draws inside the compiled
step; `HostBatches` gathers them on the host from token arrays too big for the devices (a prepared dataset,
memory-mapped), each process only the rows its devices hold, the next calls' in a background thread.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from jaxgpt.core.config import TrainConfig
from jaxgpt.core.keys import step_keys
from jaxgpt.system.sharding import Placement

PREFETCH_CALLS = 2  # compiled calls whose windows are prepared ahead of the one training


def window_offsets(key: jax.Array, n_tokens: int, shape: tuple[int, ...], block_size: int) -> jax.Array:
    """Start offsets `shape` of random windows of block_size + 1 tokens in a split of `n_tokens` (the lecture's
    `torch.randint(len(data) - block_size, (batch_size,))`). A shape (A, B) draws the same numbers as (A * B,)."""
    return jax.random.randint(key, shape, 0, n_tokens - block_size)


def train_offsets(seed: int, steps: jax.Array, n_tokens: int, grad_accum: int, batch_size: int,
                  block_size: int) -> jax.Array:
    """(K, A, B) window offsets of the training steps `steps` (K,): A micro-batches of B rows each, drawn with the
    step's batch key. The on-device path and the host path (jaxgpt.data.batches) both draw with this function."""
    def one_step(step):
        batch_key, _ = step_keys(seed, step)
        return window_offsets(batch_key, n_tokens, (grad_accum, batch_size), block_size)

    return jax.vmap(one_step)(steps)


def eval_offsets(key: jax.Array, n_tokens: int, eval_iters: int, batch_size: int, block_size: int) -> jax.Array:
    """(eval_iters, B) window offsets of a loss estimate: batch i drawn with the i-th of `key`'s split."""
    return jax.vmap(lambda k: window_offsets(k, n_tokens, (batch_size,), block_size))(
        jax.random.split(key, eval_iters))


def gather_windows(tokens, offsets, block_size: int):
    """The windows (..., T + 1) starting at `offsets` (...): jnp arrays on the device, numpy (or a memmap) on the
    host. A window's first T tokens are a context x, its last T the targets y."""
    xp = np if isinstance(tokens, np.ndarray) else jnp
    return tokens[offsets[..., None] + xp.arange(block_size + 1)]


def consecutive_windows(tokens: np.ndarray, first: int, count: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows `first` .. `first + count - 1` of `tokens` (N,) cut into consecutive blocks: window w holds tokens
    w*T .. w*T + T, so each token after the first is a target in exactly one window. Returns the windows
    (count, T + 1) int32, zero-padded past the end (padding comes after every real token: causal attention
    never lets a counted target see it), and `counted` (count, T): which targets exist."""
    index = (first + np.arange(count))[:, None] * block_size + np.arange(block_size + 1)  # (count, T + 1)
    inside = index < len(tokens)
    windows = np.where(inside, tokens[np.minimum(index, len(tokens) - 1)], 0).astype(np.int32)
    return windows, inside[:, 1:]


def get_batch(key: jax.Array, data: jax.Array, batch_size: int, block_size: int) -> tuple[jax.Array, jax.Array]:
    """Random contexts x (B, T) and their next-token targets y (B, T), drawn on device (jittable)."""
    windows = gather_windows(data, window_offsets(key, data.shape[0], (batch_size,), block_size), block_size)
    return windows[:, :-1], windows[:, 1:]  # (B, T) each


def draw_eval_windows(eval_iters: int, batch_size: int, block_size: int, data: jax.Array,
                       key: jax.Array) -> jax.Array:
    """(eval_iters, B, T + 1) random windows of the split `data` on the device (`data.eval_offsets`)."""
    return gather_windows(data, eval_offsets(key, data.shape[0], eval_iters, batch_size, block_size), block_size)


class Batches(Protocol):
    """Where a run's windows come from. The compiled train step takes `step_input(first, K)` (laid out as
    `input_sharding`) and turns it into the windows (K, A, B, T + 1) of steps `first` .. `first + K - 1` with
    `windows`, inside the step; evaluation takes `eval_windows`."""

    input_sharding: NamedSharding

    def windows(self, step_input: jax.Array, steps: jax.Array) -> jax.Array: ...

    def step_input(self, first_step: int, steps: int) -> jax.Array: ...

    def step_input_spec(self, steps: int) -> jax.ShapeDtypeStruct: ...

    def eval_windows(self, split: str, key: jax.Array) -> jax.Array: ...

    def eval_windows_spec(self, split: str) -> jax.ShapeDtypeStruct: ...

    def compile_eval_windows(self, split: str) -> None: ...

    def prefetch(self, first_step: int, steps: int) -> None: ...

    def waited(self) -> float | None: ...

    def reset_wait(self) -> None: ...

    def close(self) -> None: ...


class DeviceBatches:
    """The splits on the devices (replicated); the compiled step draws its windows there. Without `splits`, only
    the in-step part (`windows`) is usable, for a step given the train split directly. The splits go to the devices
    at their first use, so that the programs can be compiled (`step_input_spec`, `eval_windows_spec`) for devices
    that are not there (jaxgpt.run.compile_check)."""

    def __init__(self, config: TrainConfig, placement: Placement, splits: dict[str, np.ndarray] | None = None):
        self.config, self.placement = config, placement
        self.input_sharding = placement.replicated
        self._host_splits = dict(splits or {})
        self._placed: dict[str, jax.Array] = {}
        self._eval_windows = jax.jit(functools.partial(
            draw_eval_windows, config.eval_iters, config.batch_size, config.block_size),
            out_shardings=placement.batch_along(1))

    def _split(self, name: str) -> jax.Array:
        if name not in self._placed:
            self._placed[name] = self.placement.replicate(self._host_splits[name])
        return self._placed[name]

    def _split_spec(self, name: str) -> jax.ShapeDtypeStruct:
        tokens = self._host_splits[name]
        return jax.ShapeDtypeStruct(tokens.shape, tokens.dtype, sharding=self.input_sharding)

    def windows(self, step_input: jax.Array, steps: jax.Array) -> jax.Array:
        """In the compiled step: the windows (K, A, B, T + 1) of `steps` (K,), drawn from the train split (N,)."""
        c = self.config
        offsets = train_offsets(c.seed, steps, step_input.shape[0], c.grad_accum, c.batch_size, c.block_size)
        return jax.lax.with_sharding_constraint(gather_windows(step_input, offsets, c.block_size),
                                                self.placement.batch_along(2))

    def step_input(self, first_step: int, steps: int) -> jax.Array:
        return self._split("train")

    def step_input_spec(self, steps: int) -> jax.ShapeDtypeStruct:
        return self._split_spec("train")

    def eval_windows(self, split: str, key: jax.Array) -> jax.Array:
        """The (eval_iters, B, T + 1) random windows of a loss estimate of `split` ("train" or "val")."""
        return self._eval_windows(self._split(split), key)

    def eval_windows_spec(self, split: str) -> jax.ShapeDtypeStruct:
        key = jax.eval_shape(lambda: jax.random.key(0))
        windows = jax.eval_shape(self._eval_windows, self._split_spec(split), key)
        return jax.ShapeDtypeStruct(windows.shape, windows.dtype, sharding=self.placement.batch_along(1))

    def compile_eval_windows(self, split: str) -> None:
        """Compile the program `eval_windows(split, key)` runs, without running it."""
        self._eval_windows.lower(self._split_spec(split), jax.eval_shape(lambda: jax.random.key(0))).compile()

    def prefetch(self, first_step: int, steps: int) -> None:
        """Nothing to prepare: the step draws its own windows."""

    def waited(self) -> float | None:
        """None: the steps never wait for windows."""
        return None

    def reset_wait(self) -> None:
        """Nothing is counted."""

    def close(self) -> None:
        """Nothing runs in the background."""


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
        self.input_sharding = placement.batch_along(2)
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

    def windows(self, step_input: jax.Array, steps: jax.Array) -> jax.Array:
        """In the compiled step: the windows are the step's input, gathered here beforehand."""
        return step_input

    step_input = train_windows

    def step_input_spec(self, steps: int) -> jax.ShapeDtypeStruct:
        c = self.config
        shape = (steps, c.grad_accum, c.batch_size, c.block_size + 1)
        return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.input_sharding)

    def waited(self) -> float:
        """Seconds the steps waited for windows since `reset_wait`."""
        return self.wait_seconds

    def reset_wait(self) -> None:
        self.wait_seconds = 0.0

    def eval_windows(self, split: str, key: jax.Array) -> jax.Array:
        """The (eval_iters, B, T + 1) random windows of a loss estimate of `split` ("train" or "val")."""
        c, tokens = self.config, self.splits[split]
        offsets = np.asarray(self._eval_offsets(self._to_cpu(key), len(tokens), c.eval_iters, c.batch_size,
                                                c.block_size))  # (eval_iters, B)
        return place_windows(tokens, offsets, c.block_size, self.placement.batch_along(1))

    def eval_windows_spec(self, split: str) -> jax.ShapeDtypeStruct:
        c = self.config
        shape = (c.eval_iters, c.batch_size, c.block_size + 1)
        return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.placement.batch_along(1))

    def compile_eval_windows(self, split: str) -> None:
        """Nothing worth compiling ahead: the windows are gathered on the host (their offsets' program is tiny)."""

    def _drop_ahead(self) -> None:
        for future in self._ahead.values():
            future.cancel()
        self._ahead.clear()

    def close(self) -> None:
        """Stop preparing windows (waits for the one being gathered)."""
        self._drop_ahead()
        self._pool.shutdown(wait=True)
