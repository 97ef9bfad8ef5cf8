from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import GPT, BigramLanguageModel, count_params, init_params, layer_norm
from jaxgpt.system.errors import UsageError

TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1)


def init(config: GPTConfig, seed: int = 0):
    return init_params(config, jax.random.key(seed))


def test_logits_shape():
    params = init(TINY)
    idx = jnp.ones((3, 5), jnp.int32)
    assert GPT(TINY).apply({"params": params}, idx).shape == (3, 5, 11)


def test_lecture_parameter_count():
    lecture = GPTConfig()  # 10.788929M in the lecture
    shapes = jax.eval_shape(lambda: GPT(lecture).init(jax.random.key(0), jnp.zeros((1, 256), jnp.int32)))
    assert count_params(shapes["params"]) == 10_788_929


def test_small_parameter_count():
    small = GPTConfig(block_size=32, n_layer=4, n_head=4, n_embd=64, dropout=0.0)
    assert count_params(init(small)) == 209_729


def test_init_is_the_lectures():
    params = init(GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=128))
    kernel = params["blocks_0"]["ffwd"]["fc"]["kernel"]
    assert abs(float(kernel.std()) - 0.02) < 0.001
    assert float(jnp.abs(params["blocks_0"]["ffwd"]["fc"]["bias"]).max()) == 0.0
    assert abs(float(params["token_embedding_table"]["embedding"].std()) - 0.02) < 0.002
    assert "bias" not in params["blocks_0"]["sa"]["query"]
    assert "bias" in params["blocks_0"]["sa"]["proj"] and "bias" in params["lm_head"]


@settings(max_examples=20, deadline=None)
@given(t=st.integers(0, 7), seed=st.integers(0, 2**16))
def test_causality(t, seed):
    """Changing token t leaves the logits at positions < t unchanged, and changes position t."""
    params = init(TINY, seed)
    idx = jax.random.randint(jax.random.key(seed), (2, 8), 0, 11)
    changed = idx.at[:, t].set((idx[:, t] + 1) % 11)
    a = GPT(TINY).apply({"params": params}, idx)
    b = GPT(TINY).apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert not np.allclose(a[:, t], b[:, t])


def test_too_long_sequence_is_an_error():
    with pytest.raises(UsageError, match="sequence length 9 exceeds block_size 8"):
        GPT(TINY).apply({"params": init(TINY)}, jnp.zeros((1, 9), jnp.int32))


def test_dropout_only_when_not_deterministic():
    params, idx = init(TINY), jnp.ones((2, 8), jnp.int32)
    model = GPT(TINY)
    a = model.apply({"params": params}, idx)
    np.testing.assert_array_equal(a, model.apply({"params": params}, idx, deterministic=True))
    d1 = model.apply({"params": params}, idx, deterministic=False, rngs={"dropout": jax.random.key(1)})
    d2 = model.apply({"params": params}, idx, deterministic=False, rngs={"dropout": jax.random.key(1)})
    d3 = model.apply({"params": params}, idx, deterministic=False, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(d1, d2)
    assert not np.allclose(d1, a) and not np.allclose(d1, d3)


def test_gpt2_family_switches():
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, activation="gelu_tanh",
                       tie_embeddings=True, qkv_bias=True, lm_head_bias=False)
    params = init(config)
    assert "lm_head" not in params and "lm_head_bias" not in params
    assert "bias" in params["blocks_0"]["sa"]["query"]
    assert GPT(config).apply({"params": params}, jnp.ones((1, 4), jnp.int32)).shape == (1, 4, 11)


def test_layer_norm_variance_is_two_pass():
    """Inputs far from zero: E[x^2] - E[x]^2 cancels every digit in float32; mean((x - mean)^2), as torch, does not."""
    x = (1000.0 + np.random.default_rng(0).normal(0.0, 0.01, (4, 16))).astype(np.float32)  # (B, C)
    ln = layer_norm(TINY, "ln")
    y = ln.apply(ln.init(jax.random.key(0), jnp.zeros((1, 16))), jnp.asarray(x))
    centered = x.astype(np.float64) - x.mean(-1, keepdims=True, dtype=np.float64)
    exact = centered / np.sqrt(centered.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, exact, atol=1e-2)  # float32 rounding of the mean near 1000 alone costs ~3e-3


def test_bigram_reads_logits_off_the_table():
    model = BigramLanguageModel(vocab_size=7)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    idx = jnp.array([[3, 1]])
    logits = model.apply({"params": params}, idx)
    np.testing.assert_array_equal(logits[0, 0], params["token_embedding_table"]["embedding"][3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, r"n_embd \(30\) must be divisible by n_head \(4\); try n_head=3"),
        ({"n_layer": 0}, "n_layer must be positive"),
        ({"block_size": -1}, "block_size must be positive"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"activation": "tanh"}, "activation must be one of"),
    ],
)
def test_bad_model_config(kwargs, message):
    with pytest.raises(UsageError, match=message):
        GPTConfig(**kwargs)
