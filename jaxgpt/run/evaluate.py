"""Scoring a model on a whole split: loss, perplexity and bits per byte in consecutive windows (deterministic,
nanoGPT's `eval_gpt2*` job); training's `eval_mode="full"` uses the same `whole_split_loss`."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.core.config import INT32_MAX, GPTConfig
from jaxgpt.core.losses import loss_and_bpb, make_split_sums
from jaxgpt.core.model import build_model
from jaxgpt.data.batches import consecutive_windows
from jaxgpt.data.text import load_dataset
from jaxgpt.system import sharding
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.weights import pretrained

Split = Literal["train", "val"]
FULL_EVAL_BATCHES = 16  # batches of consecutive windows per compiled call of the whole-split loss


def whole_split_loss(sums_of_batches: Callable, params, tokens: np.ndarray, batch_size: int, block_size: int,
                     token_bytes: jax.Array, put: Callable = jnp.asarray) -> tuple[float, float]:
    """(mean loss, bits per byte) over the whole split `tokens` (N,), by `sums_of_batches` (`make_split_sums`):
    every token after the first is predicted once, from the tokens before it in its block_size window; windows are
    consecutive, up to FULL_EVAL_BATCHES batches of `batch_size` per compiled call (fewer for a short split), moved
    to the devices by `put`. Deterministic: no key."""
    B, T = batch_size, block_size
    n_windows, batches = -(-(len(tokens) - 1) // T), full_eval_batches(len(tokens), B, T)
    total = np.zeros(4)
    for first in range(0, n_windows, batches * B):
        windows, counted = consecutive_windows(tokens, first, batches * B, T)  # (batches * B, T + 1), (.., T)
        windows, counted = put(windows.reshape(batches, B, T + 1)), put(counted.reshape(batches, B, T))
        total += np.asarray(sums_of_batches(params, windows, counted, token_bytes), np.float64)
    return loss_and_bpb(total)


def full_eval_batches(n_tokens: int, batch_size: int, block_size: int) -> int:
    """Batches per compiled call of `whole_split_loss` over a split of `n_tokens`: FULL_EVAL_BATCHES, fewer for a
    short split."""
    n_windows = -(-(n_tokens - 1) // block_size)
    return min(FULL_EVAL_BATCHES, -(-n_windows // batch_size))


def whole_split_window_specs(n_tokens: int, batch_size: int, block_size: int,
                             where: jax.sharding.Sharding) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """The windows (batches, B, T + 1) and counted targets (batches, B, T) of one call of `whole_split_loss` over a
    split of `n_tokens`, placed by `where`: what its program is compiled for."""
    shape = (full_eval_batches(n_tokens, batch_size, block_size), batch_size, block_size)
    return (jax.ShapeDtypeStruct((*shape[:2], block_size + 1), jnp.int32, sharding=where),
            jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=where))


@dataclasses.dataclass(frozen=True)
class Score:
    """A model's loss over a split."""

    loss: float  # mean next-token cross-entropy, nats per token
    perplexity: float  # exp(loss)
    bpb: float  # bits per UTF-8 byte of the text the targets stand for
    tokens: int  # targets scored: every token of the split but the first
    windows: int  # consecutive windows of block_size targets
    block_size: int


def check_block_size(block_size: int, config: GPTConfig) -> None:
    """Refuse windows longer than the model's context (UsageError)."""
    if not 1 <= block_size <= config.block_size:
        raise UsageError(f"block_size must be in [1, {config.block_size}] (the model's context), got {block_size}")


def score(config: GPTConfig, params, tokens: np.ndarray, token_bytes: np.ndarray, batch_size: int,
          block_size: int) -> Score:
    """The `Score` of `params` (a `config` model) over the split `tokens` (N,), in consecutive windows of
    `block_size` <= config.block_size, `batch_size` windows per batch; `token_bytes` (V,) from the tokenizer."""
    check_block_size(block_size, config)
    if len(tokens) < 2:
        raise UsageError(f"the split has {len(tokens)} tokens; scoring needs at least 2")
    mesh = sharding.make_mesh()
    sharding.check_batch_size(batch_size, mesh)
    placement = sharding.Placement.for_state(mesh, jax.eval_shape(lambda: params))
    params = jax.device_put(params, placement.state)
    sums_of_batches = make_split_sums(build_model(config), placement)
    loss, bpb = whole_split_loss(sums_of_batches, params, tokens, batch_size, block_size,
                                 placement.replicate(token_bytes), placement.replicate)
    if not math.isfinite(loss):
        raise JaxgptError(f"the loss over the split is {loss}: the weights hold non-finite values or overflow in "
                          "this dtype; no score is reported (try --dtype=float32, or other weights)")
    return Score(loss, math.exp(loss), bpb, len(tokens) - 1, -(-(len(tokens) - 1) // block_size), block_size)


def evaluate(source: str, data_path: str | os.PathLike | None = None, split: Split = "val", batch_size: int = 8,
             block_size: int | None = None, dtype: str = "float32") -> Score:
    """Score the weights `source` (anything `pretrained.load` reads) on the `split` of `data_path` (a text file or a
    prepared dataset; default: $JAXGPT_DATA, the cache or a download), tokenized as the weights were; the windows
    are the model's block_size unless a smaller `block_size` is given; weights in `dtype` (float32 or bfloat16,
    `pretrained.for_inference`)."""
    if split not in ("train", "val"):
        raise UsageError(f"split must be train or val, got {split!r}")
    if not 1 <= batch_size <= INT32_MAX:
        raise UsageError(f"batch_size must be in [1, {INT32_MAX:,}], got {batch_size:,}")
    config, params, tokenizer = pretrained.load(source, dtype)
    config = pretrained.for_inference(config, dtype)
    block_size = config.block_size if block_size is None else block_size
    check_block_size(block_size, config)  # before the data is read
    dataset = load_dataset(data_path, block_size)
    tokenizer = pretrained.check_data_tokenizer(source, tokenizer, config.vocab_size, str(data_path or "the data"),
                                                dataset.tokenizer)
    tokens = dataset.train if split == "train" else dataset.val
    return score(config, params, tokens, tokenizer.token_bytes(), batch_size, block_size)
