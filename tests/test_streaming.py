"""jaxgpt/core/streaming.py: chunked sampling draws exactly what `generate` draws, and its programs are compiled
once for every prompt of an interactive session."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxgpt.core import streaming
from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import init_params
from jaxgpt.core.sampling import generate, kv_cache_sizes
from jaxgpt.core.streaming import stream
from jaxgpt.system.errors import UsageError

# block_size 128: two KV cache sizes (64, 128), so streams cross a cache growth and go on beyond the context
LEARNED = GPTConfig(vocab_size=11, block_size=128, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
ROPE = GPTConfig(vocab_size=11, block_size=128, n_layer=2, n_head=2, n_embd=16, dropout=0.0, position="rope",
                 norm="rmsnorm", qk_norm=True)
BIGRAM = GPTConfig(vocab_size=11, block_size=128, model_type="bigram")  # no KV cache: recompute only
PARAMS = {config: init_params(config, jax.random.key(0)) for config in (LEARNED, ROPE, BIGRAM)}


def streamed(config: GPTConfig, prompt, max_new_tokens: int, **options) -> np.ndarray:
    """The chunks of `stream`, joined: (B, max_new_tokens)."""
    chunks = list(stream(config, PARAMS[config], prompt, max_new_tokens, jax.random.key(7), **options))
    assert all(chunk.shape[1] <= options.get("chunk", streaming.STREAM_CHUNK) for chunk in chunks)
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((len(prompt), 0), np.int32)


@st.composite
def stream_cases(draw) -> tuple:
    config = draw(st.sampled_from([LEARNED, ROPE, BIGRAM]))
    T0 = draw(st.sampled_from([1, 5, 63, 64, 127, 128, 140]))  # around the cache sizes and past block_size
    prompt = draw(st.lists(st.lists(st.integers(0, 10), min_size=T0, max_size=T0), min_size=1, max_size=2))
    options = {"chunk": draw(st.sampled_from([1, 3, 8, 50])), "temperature": draw(st.sampled_from([0.0, 0.8])),
               "top_k": draw(st.sampled_from([None, 3])),
               "cache": draw(st.sampled_from(["recompute", "rolling"] if config is ROPE else ["recompute"]))}
    return config, prompt, draw(st.sampled_from([0, 1, 2, 70, 150])), options


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream_cases())
def test_stream_draws_what_generate_draws(case):
    """Joined, the chunks are generate's new tokens for the same key, through every phase: the prefill, decoding
    at each cache size, then recomputing or a rolling cache beyond block_size."""
    config, prompt, max_new_tokens, options = case
    whole = generate(config, PARAMS[config], jnp.asarray(prompt, jnp.int32), max_new_tokens, jax.random.key(7),
                     **{name: value for name, value in options.items() if name != "chunk"})
    np.testing.assert_array_equal(streamed(config, prompt, max_new_tokens, **options), whole[:, len(prompt[0]):])


@pytest.mark.parametrize("config", [LEARNED, ROPE, BIGRAM])
def test_padded_prompts_draw_what_generate_draws(config):
    """Interactive prompts go through a prefill padded to block_size: the same tokens as generate's for prompts
    of every length, including one longer than the context (its last block_size tokens)."""
    rng = np.random.default_rng(0)
    for T0 in (1, 30, 64, 128, 135):
        prompt = rng.integers(0, 11, (1, T0)).tolist()
        whole = generate(config, PARAMS[config], jnp.asarray(prompt, jnp.int32), 80, jax.random.key(7),
                         temperature=0.8)
        np.testing.assert_array_equal(streamed(config, prompt, 80, padded=True, temperature=0.8), whole[:, T0:])


def test_padded_prompts_compile_once():
    """After a first prompt has gone through every phase, prompts of other lengths compile nothing new."""
    programs = (streaming._prefill, streaming._chunk)
    streamed(LEARNED, [[1] * 3], 200, padded=True)
    compiled = [program._cache_size() for program in programs]
    for T0 in (1, 20, 90, 128):
        streamed(LEARNED, [[2] * T0], 200, padded=True)
    assert [program._cache_size() for program in programs] == compiled
    assert len(kv_cache_sizes(LEARNED.block_size)) == 2  # what the count above covers: both cache sizes


def test_bad_arguments_are_refused_before_anything_runs():
    with pytest.raises(UsageError, match="prompt must be"):
        next(stream(LEARNED, PARAMS[LEARNED], [[]], 5, jax.random.key(0)))
    with pytest.raises(UsageError, match="cache='rolling' needs a GPT with rotary positions"):
        next(stream(LEARNED, PARAMS[LEARNED], [[1]], 5, jax.random.key(0), cache="rolling"))
    with pytest.raises(UsageError, match=r"chunk must be an int >= 1, got 0"):
        next(stream(LEARNED, PARAMS[LEARNED], [[1]], 5, jax.random.key(0), chunk=0))
