"""Scoring a model on a dataset: loss, perplexity and bits per byte over a whole split, in consecutive windows
(deterministic, nanoGPT's `eval_gpt2*` job). The command line is `python -m jaxgpt.eval` (jaxgpt/cli/eval.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Literal

import jax
import numpy as np

from jaxgpt import pretrained, sharding
from jaxgpt.config import GPTConfig
from jaxgpt.data import load_dataset
from jaxgpt.errors import UsageError
from jaxgpt.model import build_model
from jaxgpt.train import make_split_sums, whole_split_loss

Split = Literal["train", "val"]


@dataclasses.dataclass(frozen=True)
class Score:
    """A model's loss over a split."""

    loss: float  # mean next-token cross-entropy, nats per token
    perplexity: float  # exp(loss)
    bpb: float  # bits per UTF-8 byte of the text the targets stand for
    tokens: int  # targets scored: every token of the split but the first
    windows: int  # consecutive windows of block_size targets
    block_size: int


def _check_block_size(block_size: int, config: GPTConfig) -> None:
    if not 1 <= block_size <= config.block_size:
        raise UsageError(f"block_size must be in [1, {config.block_size}] (the model's context), got {block_size}")


def score(config: GPTConfig, params, tokens: np.ndarray, token_bytes: np.ndarray, batch_size: int,
          block_size: int) -> Score:
    """The `Score` of `params` (a `config` model) over the split `tokens` (N,), in consecutive windows of
    `block_size` <= config.block_size, `batch_size` windows per batch; `token_bytes` (V,) from the tokenizer."""
    _check_block_size(block_size, config)
    if len(tokens) < 2:
        raise UsageError(f"the split has {len(tokens)} tokens; scoring needs at least 2")
    mesh = sharding.make_mesh()
    sharding.check_batch_size(batch_size, mesh)
    placement = sharding.Placement.for_state(mesh, jax.eval_shape(lambda: params))
    params = jax.device_put(params, placement.state)
    sums_of_batches = make_split_sums(build_model(config), placement)
    loss, bpb = whole_split_loss(sums_of_batches, params, tokens, batch_size, block_size,
                                 placement.replicate(token_bytes), placement.replicate)
    return Score(loss, math.exp(loss), bpb, len(tokens) - 1, -(-(len(tokens) - 1) // block_size), block_size)


def evaluate(source: str, data_path: str | os.PathLike | None = None, split: Split = "val", batch_size: int = 8,
             block_size: int | None = None, dtype: str = "float32") -> Score:
    """Score the weights `source` (anything `pretrained.load` reads) on the `split` of `data_path` (a text file or a
    prepared dataset; default: $JAXGPT_DATA, the cache or a download), tokenized as the weights were; the windows
    are the model's block_size unless a smaller `block_size` is given; weights in `dtype` (float32 or bfloat16,
    `pretrained.for_inference`)."""
    if split not in ("train", "val"):
        raise UsageError(f"split must be train or val, got {split!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {batch_size}")
    config, params, tokenizer = pretrained.load(source, dtype)
    config = pretrained.for_inference(config, dtype)
    block_size = config.block_size if block_size is None else block_size
    _check_block_size(block_size, config)  # before the data is read
    dataset = load_dataset(data_path, block_size)
    tokenizer = pretrained.check_data_tokenizer(source, tokenizer, config.vocab_size, str(data_path or "the data"),
                                                dataset.tokenizer)
    tokens = dataset.train if split == "train" else dataset.val
    return score(config, params, tokens, tokenizer.token_bytes(), batch_size, block_size)


if __name__ == "__main__":  # `python -m jaxgpt.eval`: the command line lives in jaxgpt/cli/eval.py
    from jaxgpt.cli.eval import entry_point

    entry_point()
