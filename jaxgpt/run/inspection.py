"""What a model makes of a text, token by token: each token's loss, the model's top-k guesses for the next token,
and where every head of every layer looked. One compiled forward pass per batch of windows returns all of it: the
attention weights are the model's own, sown by `CausalSelfAttention` (no second implementation of the model).

The text is scored in `python -m jaxgpt.eval`'s consecutive windows of block_size tokens, so the losses average to
eval's loss on the same tokens. The page is `jaxgpt/run/inspect_page.py`'s; the command `python -m jaxgpt.inspect`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import build_model
from jaxgpt.data.tokenizers import Tokenizer
from jaxgpt.system.errors import UsageError

WINDOWS_PER_CALL = 8  # windows scored per compiled call: bounds the attention weights held at once
TOP_K = 5  # the next tokens the page lists after each token
RUN_PAGE_WINDOWS, RUN_PAGE_MIN_TOKENS = 4, 512  # the val stretch of a run's inspect.html (block 256: 1,024 tokens)
LN2 = float(np.log(2.0))


@dataclasses.dataclass(frozen=True)
class Inspection:
    """One model's reading of a text of N tokens, in windows of `window` tokens (window w: tokens w*window ..)."""

    source: str
    pieces: list[str]  # each token's text
    token_bytes: np.ndarray  # (N,) int: UTF-8 bytes per token
    bits: np.ndarray  # (N,) float32: -log2 p(token i | the window before it, as eval scores it); NaN for token 0
    top_ids: np.ndarray  # (N, k) int32: the model's k likeliest next tokens after token i
    top_probs: np.ndarray  # (N, k) float32
    attention: np.ndarray  # (N, L, H, window) float32: query i's weights over its window's keys, 0 after i
    window: int
    vocab: dict[int, str]  # the text of each token id shown: the text's and the top-k's

    @property
    def loss(self) -> float:
        """Mean next-token loss in nats, as `python -m jaxgpt.eval` reports it."""
        return float(np.nanmean(self.bits) * LN2)

    @property
    def bits_per_byte(self) -> float:
        return float(np.nansum(self.bits) / self.token_bytes[1:].sum())

    def head_summary(self) -> tuple[np.ndarray, np.ndarray]:
        """(L, H) mean distance each head looks back (in tokens) and (L, H) mean entropy of its weights (bits),
        over every query of the text."""
        N, L, H, T = self.attention.shape
        back = (np.arange(N) % self.window)[:, None] - np.arange(T)[None, :]  # (N, T): query - key position
        weights = self.attention
        distance = np.einsum("nlht,nt->lh", weights, np.maximum(back, 0)) / N
        entropy = -np.where(weights > 0, weights * np.log2(np.where(weights > 0, weights, 1.0)), 0.0).sum(-1)
        return distance, entropy.mean(0)


def run_page_tokens(n_val: int, block_size: int) -> int:
    """How many val tokens a training run's inspect.html reads: RUN_PAGE_WINDOWS windows, at least
    RUN_PAGE_MIN_TOKENS, at most the split."""
    return min(n_val, max(RUN_PAGE_WINDOWS * block_size, RUN_PAGE_MIN_TOKENS))


def _inspected(config: GPTConfig) -> GPTConfig:
    """The model as inspection runs it: the same function, with the attention weights to sow."""
    return dataclasses.replace(config, dropout=0.0, attention="xla")


def lowered_read(config: GPTConfig, params, n_windows: int, where: jax.sharding.Sharding) -> jax.stages.Lowered:
    """The largest program `inspect_tokens` runs for `n_windows` windows, lowered (the compile checks' view)."""
    windows = jax.ShapeDtypeStruct((min(n_windows, WINDOWS_PER_CALL), config.block_size), jnp.int32, sharding=where)
    return _read_windows.lower(_inspected(config), params, windows, min(TOP_K, config.vocab_size))


@functools.partial(jax.jit, static_argnames=("config", "top_k"))
def _read_windows(config: GPTConfig, params, windows: jax.Array, top_k: int):
    """windows (W, T) -> log-probs of the next tokens (W, T, V), top-k (W, T, k) ids and probs, attention
    (W, L, H, T, T): one forward pass."""
    logits, variables = build_model(config).apply({"params": params}, windows, mutable=["intermediates"])
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    top_logp, top_ids = jax.lax.top_k(log_probs, top_k)
    layers = variables["intermediates"]
    attention = jnp.stack([layers[f"blocks_{i}"]["sa"]["attention"][0] for i in range(config.n_layer)], axis=1)
    return log_probs, top_ids, jnp.exp(top_logp), attention


def inspect_text(config: GPTConfig, params, tokenizer: Tokenizer, text: str, source: str,
                 top_k: int = TOP_K) -> Inspection:
    """`text` read by the model: see `Inspection`. UsageError for a text of fewer than 2 tokens or characters
    outside the tokenizer's vocabulary."""
    try:
        tokens = np.asarray(tokenizer.encode(text), np.int32)
    except UsageError as err:
        raise UsageError(f"the text has {err}; inspect text the model's tokenizer can spell") from None
    return inspect_tokens(config, params, tokenizer, tokens, source, top_k)


def inspect_tokens(config: GPTConfig, params, tokenizer: Tokenizer, tokens: np.ndarray, source: str,
                   top_k: int = TOP_K) -> Inspection:
    """The token ids `tokens` (N,) read by the model: see `Inspection`. UsageError for fewer than 2 tokens."""
    if config.model_type != "gpt":
        raise UsageError(f"{source} is a {config.model_type} model, which has no attention to inspect")
    tokens = np.asarray(tokens, np.int32)
    if len(tokens) < 2:
        raise UsageError(f"the text is {len(tokens)} token(s) long; give at least 2 tokens (the first is only read)")
    config = _inspected(config)
    T, N = config.block_size, len(tokens)
    n_windows = -(-N // T)
    padded = np.zeros(n_windows * T, np.int32)
    padded[:N] = tokens  # causal: the padding after a window's last token is never seen by it
    windows = padded.reshape(n_windows, T)
    k = min(top_k, config.vocab_size)
    parts = [_read_windows(config, params, jnp.asarray(windows[i:i + WINDOWS_PER_CALL]), k)
             for i in range(0, n_windows, WINDOWS_PER_CALL)]
    log_probs = np.concatenate([np.asarray(p[0]) for p in parts]).reshape(n_windows * T, -1)[:N]
    bits = np.full(N, np.nan, np.float32)  # token i is predicted at position i - 1: in its window or, for a
    bits[1:] = -log_probs[np.arange(N - 1), tokens[1:]] / LN2  # window's first, at the previous one's last (eval's)
    top_ids = np.concatenate([np.asarray(p[1]) for p in parts]).reshape(n_windows * T, k)[:N]
    top_probs = np.concatenate([np.asarray(p[2]) for p in parts]).reshape(n_windows * T, k)[:N]
    attention = np.concatenate([np.asarray(p[3]) for p in parts])  # (W, L, H, T, T)
    attention = attention.transpose(0, 3, 1, 2, 4).reshape(n_windows * T, config.n_layer, config.n_head, T)[:N]
    vocab = {int(i): tokenizer.decode([int(i)]) for i in np.unique(np.concatenate([tokens, top_ids.ravel()]))}
    return Inspection(source=source, pieces=[vocab[int(t)] for t in tokens],
                      token_bytes=tokenizer.token_bytes()[tokens], bits=bits, top_ids=top_ids, top_probs=top_probs,
                      attention=attention, window=T, vocab=vocab)
