"""Sampling: the KV-cached sampler against a naive one, the key rule, filters, statistics and argument checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import GPT, BigramLanguageModel, init_params
from jaxgpt.core.sampling import (
    KV_CACHE_GROWTH,
    KV_CACHE_MIN_STEP,
    Sampling,
    draw_token,
    filter_logits,
    generate,
    generate_cached,
    generate_with_model,
    kv_cache_sizes,
)
from jaxgpt.system.errors import UsageError
from jaxgpt.torch_reference.lecture import GPTLanguageModel, load_jaxgpt_params

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
GROWTH = (2, 4, 6, 8)  # KV cache sizes growing to TINY's block_size in 4 steps, as the sampler grows larger blocks'


def init(config: GPTConfig = TINY, seed: int = 0):
    return init_params(config, jax.random.key(seed))


def naive_generate(config: GPTConfig, params, prompt, max_new_tokens: int, key, **sampling) -> np.ndarray:
    """The lecture's loop in plain Python: rerun the model on the last block_size tokens, draw with fold_in(key, i)."""
    next_logits = jax.jit(lambda context: GPT(config).apply({"params": params}, context)[:, -1])  # (B, V)
    draw, how = jax.jit(draw_token), Sampling.of(config.vocab_size, **sampling)
    tokens = jnp.asarray(prompt)
    for i in range(max_new_tokens):
        new = draw(next_logits(tokens[:, -config.block_size:]), jax.random.fold_in(key, i), how)
        tokens = jnp.concatenate([tokens, new[:, None]], axis=1)
    return np.asarray(tokens)


@pytest.mark.parametrize(
    ("batch", "prompt_len", "new", "sampling", "cache_sizes"),
    [
        # the cache grows through 4, 6, 8 (2 is below the prompt), then the context crosses block_size
        (3, 3, 12, {"temperature": 1.3, "top_k": 5, "top_p": 0.9}, GROWTH),
        (2, 11, 6, {"temperature": 0.7, "top_k": None, "top_p": 0.8}, None),  # prompt longer than block_size
        (1, 8, 3, {"temperature": 0.0, "top_k": None, "top_p": None}, None),  # prompt fills block_size; greedy
        (2, 1, 9, {"temperature": 1.0, "top_k": None, "top_p": None}, GROWTH),  # the cache grows through 2, 4, 6, 8
    ],
)
def test_cached_sampler_gives_the_naive_samplers_tokens_in_float64(batch, prompt_len, new, sampling, cache_sizes):
    """`generate` (cache_sizes None: one cache size at this block_size) or its compiled sampler growing the cache
    through `cache_sizes`, against the lecture's loop."""
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), init())
        assert GPT(TINY).apply({"params": params}, jnp.zeros((1, 2), jnp.int32)).dtype == jnp.float64
        prompt = jax.random.randint(jax.random.key(prompt_len), (batch, prompt_len), 0, TINY.vocab_size)
        key = jax.random.key(42)
        if cache_sizes is None:
            cached = generate(TINY, params, prompt, new, key, **sampling)
        else:
            how = Sampling.of(TINY.vocab_size, **sampling)
            cached = generate_cached(TINY, params, prompt.astype(jnp.int32), key, how, max_new_tokens=new,
                                      cache="recompute", cache_sizes=cache_sizes)
        recomputed = generate_with_model(GPT(TINY), params, prompt, new, key, block_size=TINY.block_size,
                                         vocab_size=TINY.vocab_size, **sampling)
        expected = naive_generate(TINY, params, prompt, new, key, **sampling)
    assert cached.shape == (batch, prompt_len + new)
    np.testing.assert_array_equal(cached[:, :prompt_len], prompt)
    np.testing.assert_array_equal(cached, expected)
    np.testing.assert_array_equal(recomputed, expected)


def test_kv_cache_grows_to_block_size_in_equal_steps_of_at_least_64_positions():
    assert (KV_CACHE_GROWTH, KV_CACHE_MIN_STEP) == (4, 64)
    assert kv_cache_sizes(256) == [64, 128, 192, 256]  # the lecture's
    assert kv_cache_sizes(1024) == [256, 512, 768, 1024]
    assert kv_cache_sizes(1001) == [251, 501, 751, 1001]  # rounded up
    assert kv_cache_sizes(192) == [64, 128, 192]
    assert kv_cache_sizes(128) == [64, 128]
    assert kv_cache_sizes(127) == [127]
    assert kv_cache_sizes(TINY.block_size) == [8]
    assert kv_cache_sizes(1) == [1]


def test_generate_grows_the_cache_and_gives_the_lecture_loops_tokens():
    """At block_size 128 `generate` grows the cache from 64 to 128 positions: the same tokens as the lecture's loop
    (the recompute sampler, checked against the naive loop above), in float64."""
    config = GPTConfig(vocab_size=11, block_size=128, n_layer=1, n_head=2, n_embd=8, dropout=0.0)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), init(config))
        prompt, key = jnp.zeros((2, 1), jnp.int32), jax.random.key(7)
        cached = generate(config, params, prompt, 100, key)  # new tokens 64 and on: the cache of 128
        expected = generate_with_model(GPT(config), params, prompt, 100, key, block_size=128, vocab_size=11)
    np.testing.assert_array_equal(cached, expected)


def test_decode_steps_give_the_pytorch_references_next_token_distribution():
    config = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    params = init(config, seed=3)
    reference = load_jaxgpt_params(GPTLanguageModel(13, 16, 2, 4, 32, 0.0).eval(), params)
    context = np.random.default_rng(0).integers(0, 13, (2, 16))
    with torch.no_grad():
        torch_logits = reference(torch.from_numpy(context))[0]  # (B, T, V)
    expected = torch.softmax(torch_logits, dim=-1).numpy()

    @jax.jit
    def decode(cache, tokens):  # -> (logits (B, T, V), cache with the tokens appended)
        logits, variables = GPT(config).apply({"params": params, **cache}, tokens, decode=True, mutable=["cache"])
        return logits, variables

    # the cache filled by a prefill of 5 tokens, then one token per decode step, as `generate` does
    logits, cache = decode({}, jnp.asarray(context[:, :5]))
    steps = [logits]
    for t in range(5, 16):
        logits, cache = decode(cache, jnp.asarray(context[:, t:t + 1]))
        steps.append(logits)
    ours = jax.nn.softmax(jnp.concatenate(steps, axis=1), axis=-1)  # (B, T, V)
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_same_key_same_tokens_other_key_other_tokens():
    params, prompt = init(), jnp.zeros((4, 1), jnp.int32)
    first = generate(TINY, params, prompt, 30, jax.random.key(0))
    again = generate(TINY, params, prompt, 30, jax.random.key(0))
    other = generate(TINY, params, prompt, 30, jax.random.key(1))
    np.testing.assert_array_equal(first, again)
    assert (first != other).any(axis=1).all()
    assert len({tuple(row) for row in np.asarray(first)}) == 4  # the batch rows are independent samples


def test_new_key_and_sampling_settings_reuse_the_compiled_sampler():
    params, prompt = init(), jnp.zeros((4, 1), jnp.int32)  # the shapes of the test above: compiled once
    generate(TINY, params, prompt, 30, jax.random.key(0))
    compiled = generate_cached._cache_size()
    generate(TINY, params, prompt, 30, jax.random.key(1), temperature=0.5, top_k=2, top_p=0.7)
    generate(TINY, params, prompt, 30, jax.random.key(2), temperature=0.0)
    assert generate_cached._cache_size() == compiled


def test_zero_new_tokens_returns_the_prompt():
    prompt = jnp.array([[1, 2, 3]], jnp.int32)
    np.testing.assert_array_equal(generate(TINY, init(), prompt, 0, jax.random.key(0)), prompt)


PROBS = np.array([0.5, 0.2, 0.15, 0.1, 0.05])  # a small fixed distribution, as logits below


@pytest.mark.parametrize(
    ("sampling", "probs"),
    [
        ({"temperature": 1.0}, PROBS),
        ({"temperature": 0.5}, PROBS**2 / np.sum(PROBS**2)),  # softmax(log p / 0.5)
        ({"temperature": 1.0, "top_k": 2}, [5 / 7, 2 / 7, 0, 0, 0]),
        ({"temperature": 1.0, "top_p": 0.75}, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0]),  # 0.5+0.2 < 0.75
    ],
)
def test_draws_follow_the_filtered_distribution(sampling, probs):
    n = 20_000
    logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, 5))  # n independent rows
    args = {"top_k": None, "top_p": None, **sampling}
    tokens = draw_token(logits, jax.random.key(7), Sampling.of(5, **args))
    counts = np.bincount(np.asarray(tokens), minlength=5)
    probs = np.asarray(probs)
    assert (counts[probs == 0] == 0).all()
    assert chisquare(counts[probs > 0], n * probs[probs > 0]).pvalue > 1e-3


def test_generated_tokens_follow_the_models_distribution():
    params, n = init(seed=5), 8_000
    prompt = jnp.tile(jnp.array([[3, 1, 4]], jnp.int32), (n, 1))  # n rows: n independent first tokens
    tokens = generate(TINY, params, prompt, 1, jax.random.key(11))[:, -1]
    probs = np.asarray(jax.nn.softmax(GPT(TINY).apply({"params": params}, prompt[:1])[0, -1]), np.float64)
    counts = np.bincount(np.asarray(tokens), minlength=TINY.vocab_size)
    assert chisquare(counts, n * probs / probs.sum()).pvalue > 1e-3


def test_draw_token_is_categorical_of_filtered_logits_over_temperature():
    logits = jax.random.normal(jax.random.key(0), (3, 11)) * 2
    key = jax.random.key(9)
    drawn = draw_token(logits, key, Sampling.of(11, 0.6, 4, 0.9))
    expected = jax.random.categorical(key, filter_logits(logits, jnp.int32(4), jnp.float32(0.9)) / 0.6, axis=-1)
    np.testing.assert_array_equal(drawn, expected)
    greedy = draw_token(logits, key, Sampling.of(11, 0.0, None, None))
    np.testing.assert_array_equal(greedy, jnp.argmax(logits, axis=-1))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), top_k=st.integers(1, 12), top_p=st.one_of(st.just(1.0), st.floats(0.01, 1.0)))
def test_filters_keep_the_top_k_then_the_smallest_nucleus(seed, top_k, top_p):
    logits = np.asarray(jax.random.normal(jax.random.key(seed), (11,)) * 3, np.float64)
    kept = filter_logits(jnp.asarray(logits, jnp.float32)[None], jnp.int32(top_k), jnp.float32(top_p))[0]
    top = np.argsort(-logits)[:min(top_k, 11)]  # the top-k, most likely first
    probs = np.exp(logits[top] - logits[top].max())
    mass = np.cumsum(probs / probs.sum())  # of the top-k prefixes, renormalised
    if top_p < 1.0:
        assume(np.abs(mass - top_p).min() > 1e-4)  # away from float32 rounding at the boundary
        top = top[:np.count_nonzero(mass < top_p) + 1]  # the smallest prefix with mass >= top_p
    assert set(np.flatnonzero(np.isfinite(kept))) == set(top)


def test_recompute_sampler_follows_the_key_rule_for_the_bigram_model():
    model = BigramLanguageModel(vocab_size=7)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    key = jax.random.key(1)
    tokens = generate_with_model(model, params, jnp.array([[3]]), 20, key, block_size=4, vocab_size=7)[0]
    table = params["token_embedding_table"]["embedding"]  # row t: the logits of the token after t
    for i in range(20):  # new token i: categorical(fold_in(key, i), logits / temperature), temperature 1
        expected = jax.random.categorical(jax.random.fold_in(key, i), table[tokens[i]][None] / 1.0, axis=-1)
        assert int(tokens[i + 1]) == int(expected[0])


TEMPERATURE = r"temperature must be 0 \(greedy\) or a number in \[0.0001, 10000\] \(beyond, float32 .*, got "


@pytest.mark.parametrize(
    ("prompt", "kwargs", "message"),
    [
        ([[1, 2]], {"max_new_tokens": -1}, "max_new_tokens must be an int >= 0, got -1"),
        ([[1, 2]], {"max_new_tokens": 2.5}, "max_new_tokens must be an int >= 0, got 2.5"),
        ([[1, 2]], {"key": 0}, r"key must be one PRNG key such as jax.random.key\(0\), got 0"),
        ([[1, 2]], {"key": jax.random.split(jax.random.key(0))}, "key must be one PRNG key"),
        ([[1, 2]], {"top_k": 0}, "top_k must be an int >= 1 or None, got 0"),
        ([[1, 2]], {"top_k": 2.5}, "top_k must be an int >= 1 or None, got 2.5"),
        ([[1, 2]], {"top_p": 0.0}, r"top_p must be a number in \(0, 1\] or None, got 0.0"),
        ([[1, 2]], {"top_p": 1.5}, r"top_p must be a number in \(0, 1\] or None, got 1.5"),
        ([[1, 2]], {"temperature": -0.1}, TEMPERATURE + "-0.1"),
        ([[1, 2]], {"temperature": float("nan")}, TEMPERATURE + "nan"),
        ([[1, 2]], {"temperature": "1"}, TEMPERATURE + "'1'"),
        ([[1, 2]], {"temperature": np.ones(2)}, TEMPERATURE + r"array\(\[1., 1.\]\)"),
        ([[1, 2]], {"temperature": float("inf"), "top_k": 3}, TEMPERATURE + "inf"),  # -inf / inf: NaN draws
        ([[1, 2]], {"temperature": 1e39, "top_p": 0.5}, TEMPERATURE + "1e[+]39"),  # overflows in float32
        ([[1, 2]], {"temperature": 1e-40}, TEMPERATURE + "1e-40"),  # logits / 1e-40 overflow
        ([[1, 2]], {"max_new_tokens": 3_000_000_000}, "max_new_tokens must be at most 2,147,483,645 .*, got 3,0"),
        (np.zeros((1, 0), np.int32), {}, r"prompt must be int tokens of shape \(B, T0\) with B, T0 >= 1"),
        ([1, 2], {}, r"prompt must be int tokens of shape \(B, T0\)"),
        ([[1, 11]], {}, r"prompt must be token ids in \[0, 11\), got values in \[1, 11\]"),
        ([[-1, 2]], {}, r"prompt must be token ids in \[0, 11\), got values in \[-1, 2\]"),
        ([[1.7, 2]], {}, "prompt must be integer token ids, got float64"),
        (np.array([[2**33 + 5]]), {}, r"prompt must be token ids in \[0, 11\), got values in \[8589934597, "),
        ("ROMEO", {}, "prompt must be integer token ids, got str"),
    ],
)
def test_bad_arguments_fail_before_compiling(prompt, kwargs, message):
    args = {"max_new_tokens": 5, "key": jax.random.key(0), **kwargs}
    with pytest.raises(UsageError, match=message):  # params=None: any compile would fail differently
        generate(TINY, None, prompt, args.pop("max_new_tokens"), args.pop("key"), **args)
