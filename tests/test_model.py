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


# -- the accelerators' fused attention ----------------------------------------------------------------------------


def _lecture_attention(q, k, v):
    from jaxgpt.core.model import causal_attention

    return causal_attention(q, k, v, "xla", lambda weights: weights)


@settings(max_examples=4, deadline=None)
@given(batch=st.integers(1, 2), heads=st.integers(1, 3), blocks=st.integers(1, 2), head_size=st.sampled_from([8, 16]),
       dtype=st.sampled_from(["float32", "bfloat16"]), seed=st.integers(0, 2**16))
def test_splash_attention_equals_the_lectures_in_values_and_gradients(batch, heads, blocks, head_size, dtype, seed):
    """The Pallas splash kernel, run by Pallas' TPU interpreter on the CPU, against the lecture's attention:
    outputs and the gradients of q, k and v. Contexts are whole blocks of 128 positions (the kernel's lanes)."""
    from jax.experimental.pallas import tpu as pltpu

    from jaxgpt.core.model import splash_attention

    T = 128 * blocks
    q, k, v = (jax.random.normal(key, (batch, heads, T, head_size), jnp.dtype(dtype))
               for key in jax.random.split(jax.random.key(seed), 3))
    probe = jax.random.normal(jax.random.key(seed + 1), q.shape, jnp.float32)  # a loss that weighs every output

    def loss(attention, q, k, v):
        return (attention(q, k, v).astype(jnp.float32) * probe).sum()

    with pltpu.force_tpu_interpret_mode():
        out = splash_attention(q, k, v)
        grads = jax.grad(lambda *a: loss(splash_attention, *a), argnums=(0, 1, 2))(q, k, v)
    want = _lecture_attention(q, k, v)
    want_grads = jax.grad(lambda *a: loss(_lecture_attention, *a), argnums=(0, 1, 2))(q, k, v)
    tolerance = 2e-5 if dtype == "float32" else 5e-2  # bfloat16 keeps 8 bits: the two round differently
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(want, np.float32), atol=tolerance,
                               rtol=tolerance)
    for got, expected in zip(grads, want_grads, strict=True):
        scale = float(jnp.abs(expected.astype(jnp.float32)).max()) or 1.0
        np.testing.assert_allclose(np.asarray(got, np.float32) / scale, np.asarray(expected, np.float32) / scale,
                                   atol=tolerance * 2)


@pytest.mark.parametrize("attention", ["cudnn", "splash"])
def test_the_fused_kernels_refuse_dropout_in_one_line(attention):
    with pytest.raises(UsageError, match=f"attention='{attention}' has no dropout .* set --dropout=0"):
        GPTConfig(block_size=128, attention=attention, dropout=0.1)


def test_splash_needs_whole_blocks_of_128():
    with pytest.raises(UsageError, match="block_size must be a multiple of 128, got 96"):
        GPTConfig(block_size=96, attention="splash", dropout=0.0)


@pytest.mark.parametrize("attention,backend,message", [
    ("cudnn", "cpu", "not for the cpu backend"), ("cudnn", "tpu", "not for the tpu backend"),
    ("splash", "cpu", "not for the cpu backend"), ("splash", "gpu", "not for the gpu backend")])
def test_a_fused_kernel_is_refused_where_it_cannot_run(attention, backend, message):
    with pytest.raises(UsageError, match=message):
        GPTConfig(block_size=128, attention=attention, dropout=0.0).resolved(backend)
    assert GPTConfig(block_size=128, attention="cudnn", dropout=0.0).resolved("gpu").dtype == "bfloat16"
    with pytest.raises(UsageError, match="not for dtype=float32"):
        GPTConfig(block_size=128, attention="cudnn", dropout=0.0, dtype="float32").resolved("gpu")


def test_a_model_trained_with_a_fused_kernel_samples_and_scores_here_with_xlas():
    """for_inference (sampling, eval) computes a cudnn or splash model's attention with XLA's on this CPU: the
    same numbers as dot_product."""
    from jaxgpt.weights.pretrained import for_inference

    for attention in ("cudnn", "splash"):
        config = GPTConfig(vocab_size=11, block_size=128, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                           attention=attention)
        assert for_inference(config, "float32").attention == "dot_product"


# -- query blocks (the lecture's attention on CPU) -----------------------------------------------------------------


@settings(max_examples=6, deadline=None)
@given(T=st.sampled_from([96, 128, 130]), query_block=st.sampled_from([32, 48, 64]), seed=st.integers(0, 2**16))
def test_query_blocks_equal_the_lectures_attention_in_values_and_gradients(T, query_block, seed):
    """Blocks of queries, each against only the keys up to its end, ragged last block included, against the
    lecture's one (T, T) block: outputs and the gradients of q, k and v, within float32 rounding."""
    from jaxgpt.core.model import causal_attention

    q, k, v = (jax.random.normal(key, (2, 3, T, 16)) for key in jax.random.split(jax.random.key(seed), 3))
    probe = jax.random.normal(jax.random.key(seed + 1), q.shape)

    def loss(block, q, k, v):
        return (causal_attention(q, k, v, "xla", lambda weights: weights, query_block=block) * probe).sum()

    np.testing.assert_allclose(causal_attention(q, k, v, "xla", lambda w: w, query_block=query_block),
                               _lecture_attention(q, k, v), atol=2e-6, rtol=2e-6)
    blocked, whole = (jax.grad(loss, argnums=(1, 2, 3))(block, q, k, v) for block in (query_block, None))
    for got, want in zip(blocked, whole, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_query_blocks_skip_the_masked_scores():
    """The point of the blocks: T = 256 in blocks of 64 computes 10 of the 16 (64, 64) score blocks."""
    from jaxgpt.core.model import causal_attention

    q = jnp.zeros((1, 1, 256, 8))

    def score_elements(block):
        hlo = jax.jit(lambda q: causal_attention(q, q, q, "xla", lambda w: w, query_block=block)).lower(q).as_text()
        shapes = [line.split("tensor<")[-1] for line in hlo.splitlines() if "exponential" in line]
        return sum(int(np.prod([int(n) for n in shape.split("x")[:-1]])) for shape in shapes)

    assert score_elements(64) == 10 * 64 * 64 and score_elements(None) == 256 * 256


def test_query_blocks_leave_dropout_to_the_lectures_one_block():
    """While attention weights are dropped (training with dropout), the model keeps the lecture's (T, T) mask and
    random draws: the same logits bit for bit whatever query_block says; without dropout, equal within rounding."""
    config = GPTConfig(vocab_size=11, block_size=128, n_layer=1, n_head=2, n_embd=16, dropout=0.1)
    idx = jax.random.randint(jax.random.key(1), (2, 128), 0, 11)
    params = init(config)

    def logits(query_block, deterministic):
        cfg = GPTConfig(**{**config.__dict__, "query_block": query_block})
        return GPT(cfg).apply({"params": params}, idx, deterministic=deterministic,
                              rngs={"dropout": jax.random.key(2)})

    np.testing.assert_array_equal(logits(32, False), logits(128, False))
    np.testing.assert_allclose(logits(32, True), logits(128, True), atol=2e-6, rtol=2e-6)
