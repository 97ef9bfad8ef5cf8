"""Sampling in chunks of a few tokens, so that text shows as it is drawn and a stream can stop between chunks.

`stream` draws what `jaxgpt.core.sampling.generate` draws for the same key (the same prefill, decode and
recompute steps, the same key rule), `chunk` tokens per compiled call: the host prints each chunk while nothing
runs, and a Ctrl-C lands between two calls. A chunk program is a loop whose first and last step are arrays, so one
program serves every chunk of a phase (a cache size, rolling, recompute) and every chunk size.

`padded=True` (interactive prompts) feeds the prompt to the prefill padded to block_size, the cache's index
then set back to the prompt's length: one prefill program for every prompt, at the price of logits that may
differ from an unpadded prefill's in the last float32 bits (other matrix shapes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import Decode, build_model
from jaxgpt.core.sampling import (
    Cache,
    Sampling,
    cached_steps,
    check_cache,
    check_generate_args,
    decode_step,
    kv_cache_sizes,
    prefill,
    recompute_step,
    resize_cache,
)
from jaxgpt.system.errors import UsageError

STREAM_CHUNK = 8  # tokens per compiled call: a chunk shows every few ms on a CPU (benchmarks/stream_speed.py)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens"))
def _prefill(config: GPTConfig, params, prompt: jax.Array, prompt_len: jax.Array | None, key: jax.Array,
             sampling: Sampling, *, max_new_tokens: int) -> tuple[jax.Array, Any]:
    """`sampling.prefill`, compiled; a padded prompt (`prompt_len` an array) makes one program for every length."""
    return prefill(build_model(config), params, prompt, key, sampling, config.block_size, max_new_tokens, prompt_len)


@functools.partial(jax.jit, static_argnames=("config", "mode"), donate_argnames=("tokens", "kv"))
def _chunk(config: GPTConfig, params, tokens: jax.Array, kv, key: jax.Array, sampling: Sampling, prompt_len: jax.Array,
           start: jax.Array, stop: jax.Array, *, mode: Decode | Literal["recompute"]) -> tuple[jax.Array, Any]:
    """New tokens start .. stop - 1: decoded into the KV cache `kv` (mode True or "rolling"), or each from the model
    rerun on the last block_size tokens ("recompute", `kv` untouched). A loop whose bounds are arrays, so one
    program serves every chunk of a phase (a scan's length would be compiled in)."""
    model = build_model(config)
    if mode == "recompute":
        step = functools.partial(recompute_step, model, params, key, sampling, prompt_len, config.block_size)
        return jax.lax.fori_loop(start, stop, lambda i, tokens: step(tokens, i), tokens), kv
    step = functools.partial(decode_step, model, params, key, sampling, prompt_len, decode=mode)
    return jax.lax.fori_loop(start, stop, lambda i, carry: step(carry, i), (tokens, kv))


def stream(config: GPTConfig, params, prompt, max_new_tokens: int, key: jax.Array, *, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, cache: Cache = "recompute",
           chunk: int = STREAM_CHUNK, padded: bool = False) -> Iterator[np.ndarray]:
    """Yield the new tokens of each row of `prompt` (B, T0) as they are drawn: (B, n) arrays, n <= chunk, that
    together are what `generate` appends to the prompt for the same arguments."""
    prompt = check_generate_args(prompt, max_new_tokens, key, config.vocab_size, temperature, top_k, top_p)
    check_cache(config, cache)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise UsageError(f"chunk must be an int >= 1, got {chunk!r}")
    if max_new_tokens == 0:
        return
    sampling = Sampling.of(config.vocab_size, temperature, top_k, top_p)
    if padded:  # the model never sees more than the last block_size prompt tokens
        prompt = prompt[:, -config.block_size:]
        T0 = prompt.shape[1]
        room = jnp.zeros((prompt.shape[0], config.block_size), jnp.int32).at[:, :T0].set(prompt)  # (B, P)
        tokens, kv = _prefill(config, params, room, jnp.int32(T0), key, sampling, max_new_tokens=max_new_tokens)
    else:
        T0 = prompt.shape[1]
        tokens, kv = _prefill(config, params, prompt, None, key, sampling, max_new_tokens=max_new_tokens)
    yield np.asarray(tokens[:, T0:T0 + 1])
    # the phases of sampling.generate_cached: each cache size, then (beyond block_size) rolling or recompute
    phases = [(steps, True, size) for size, steps in cached_steps(tuple(kv_cache_sizes(config.block_size)), T0,
                                                                    max_new_tokens)]
    phases.append((range(phases[-1][0].stop if phases else 1, max_new_tokens),
                   "rolling" if cache == "rolling" else "recompute", None))
    for steps, mode, size in phases:
        if size is not None:
            kv = resize_cache(kv, size)
        for start in range(steps.start, steps.stop, chunk):
            stop = min(start + chunk, steps.stop)
            tokens, kv = _chunk(config, params, tokens, kv, key, sampling, jnp.int32(T0), jnp.int32(start),
                                jnp.int32(stop), mode=mode)
            yield np.asarray(tokens[:, T0 + start:T0 + stop])
