"""The modern options (docs/library.md, "Modern options"): RoPE, RMSNorm, QK-norm, ReLU squared, zero-initialised
projections and logit soft-capping, each a GPTConfig switch that is off by default.

- the pieces against transformers: RoPE against Llama's rotary embedding, RMSNorm against LlamaRMSNorm, and
  QK-norm followed by RoPE in a whole attention layer against Qwen3Attention (the same order, learned scales);
- whole models against jaxgpt/torch_reference/modern.py with random option combinations, by test_parity's
  machinery (logits, loss, gradients, an AdamW step, 20 training steps, same tolerances);
- the KV-cache sampler with RoPE against the recompute sampler, in float64;
- parameter trees, rules, --resume and conversion refusals, FLOPs, and the flags training the tiny config.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_parity import EXAMPLES, PARITY, RTOL, WEIGHT_SCALES, Case, check_against_pytorch
from torch_models import random_params
from transformers import LlamaConfig, Qwen3Config
from transformers.models.llama.modeling_llama import LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding

from jaxgpt.cli import parse_train_args
from jaxgpt.core.config import GPTConfig, TrainConfig, resume_changes
from jaxgpt.core.model import (
    GPT,
    CausalSelfAttention,
    FeedForward,
    _rms_norm,
    apply_rotary,
    count_params,
    init_params,
)
from jaxgpt.core.sampling import generate, generate_with_model
from jaxgpt.run.training import train
from jaxgpt.system.errors import UsageError
from jaxgpt.torch_reference import modern
from jaxgpt.weights.convert import LAYOUTS, to_torch_state_dict

ALL_ON = {"position": "rope", "norm": "rmsnorm", "qk_norm": True, "activation": "relu2", "zero_init_proj": True,
          "logit_softcap": 15.0}
TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
PIECES = settings(PARITY, max_examples=max(10, EXAMPLES))  # the pieces compile little: more examples


def scale_of(reference) -> float:
    return max(1.0, float(np.abs(np.asarray(reference, np.float64)).max()))


# ---------------------------------------------------------------------------------------------------------------
# the pieces against transformers


@PIECES
@given(B=st.integers(1, 3), n_head=st.integers(1, 4), half=st.integers(1, 8), T=st.integers(1, 64),
       start=st.integers(0, 192), theta=st.sampled_from([10000.0, 500000.0, 100.0]), seed=st.integers(0, 2**32 - 1))
def test_rotary_matches_transformers_llama(B, n_head, half, T, start, theta, seed):
    """jaxgpt's RoPE (and the PyTorch reference's) at positions start.. (a decode call's) equal Llama's
    rotate-half RoPE. Positions stay below 256: transformers computes the angles in float32, 2e-5 off there."""
    hs = 2 * half
    config = GPTConfig(vocab_size=2, block_size=start + T, n_head=n_head, n_embd=n_head * hs, position="rope",
                       rope_theta=theta)
    q, k = np.random.default_rng(seed).normal(0.0, 2.0, (2, B, n_head, T, hs)).astype(np.float32)
    llama = LlamaRotaryEmbedding(LlamaConfig(hidden_size=n_head * hs, num_attention_heads=n_head,
                                             max_position_embeddings=start + T,
                                             rope_parameters={"rope_type": "default", "rope_theta": theta}))
    cos, sin = llama(torch.from_numpy(q), torch.arange(start, start + T)[None])  # (1, T, hs)
    expected = apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(k), cos, sin)
    positions = start + jnp.arange(T)
    ours = apply_rotary(jnp.asarray(q), positions, config), apply_rotary(jnp.asarray(k), positions, config)
    ref_cos, ref_sin = (t[start:] for t in modern.rotary_cos_sin(start + T, hs, theta, torch.float32))
    reference = modern.apply_rotary(torch.from_numpy(q), ref_cos, ref_sin), modern.apply_rotary(
        torch.from_numpy(k), ref_cos, ref_sin)
    for name, jax_x, ref_x, hf_x in zip("qk", ours, reference, expected, strict=True):
        tolerance = RTOL * scale_of(hf_x)
        assert np.abs(np.asarray(jax_x) - hf_x.numpy()).max() <= tolerance, name
        assert np.abs(ref_x.numpy() - hf_x.numpy()).max() <= tolerance, name


def test_rotary_angles_carry_no_float32_error_far_out():
    """The cos/sin tables are computed in float64 and rounded once: at position 4095 jaxgpt's float32 rotation is
    within 1e-6 of the float64 one (float32 angles, as transformers computes them, are ~2e-4 off there)."""
    config = GPTConfig(vocab_size=2, block_size=4096, n_head=2, n_embd=64, position="rope")
    q = np.random.default_rng(0).normal(0.0, 1.0, (1, 2, 8, 32))
    positions = np.arange(4088, 4096)
    cos, sin = (t[positions] for t in modern.rotary_cos_sin(4096, 32, 10000.0, torch.float64))
    exact = apply_rotary_pos_emb(torch.from_numpy(q), torch.from_numpy(q), cos[None], sin[None])[0].numpy()
    ours = np.asarray(apply_rotary(jnp.asarray(q, jnp.float32), jnp.asarray(positions), config))
    assert np.abs(ours - exact).max() <= 1e-6 * scale_of(exact)


@PIECES
@given(shape=st.sampled_from([(1, 1), (3, 2), (2, 5, 16), (4, 64)]), loc=st.sampled_from([0.0, 3.0]),
       eps=st.sampled_from([1e-5, 1e-6]), seed=st.integers(0, 2**32 - 1))
def test_rms_norm_matches_llama(shape, loc, eps, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc, 1.0, shape).astype(np.float32)
    weight = rng.normal(1.0, 0.3, shape[-1:]).astype(np.float32)
    llama = LlamaRMSNorm(shape[-1], eps=eps)
    reference = modern.RMSNorm(shape[-1], eps)
    with torch.no_grad():
        llama.weight.copy_(torch.from_numpy(weight))
        reference.weight.copy_(torch.from_numpy(weight))
        expected, ref_out = llama(torch.from_numpy(x)).numpy(), reference(torch.from_numpy(x)).numpy()
    norm = _rms_norm(dataclasses.replace(TINY, layer_norm_eps=eps), "norm")
    ours = np.asarray(norm.apply({"params": {"scale": jnp.asarray(weight)}}, jnp.asarray(x)))
    assert np.abs(ours - expected).max() <= RTOL * scale_of(expected)
    assert np.abs(ref_out - expected).max() <= RTOL * scale_of(expected)


@PIECES
@given(B=st.integers(1, 3), n_head=st.integers(1, 4), half=st.integers(1, 4), T=st.integers(1, 32),
       scale=st.sampled_from(WEIGHT_SCALES), seed=st.integers(0, 2**32 - 1))
def test_qk_norm_then_rope_attention_matches_transformers_qwen3(B, n_head, half, T, scale, seed):
    """An attention layer with qk_norm and RoPE (no biases) is Qwen3Attention: RMSNorm with a learned scale over
    each head's dims, then the rotation, then causal softmax attention and the output projection."""
    hs, rng = 2 * half, np.random.default_rng(seed)
    C = n_head * hs
    config = GPTConfig(vocab_size=2, block_size=T, n_head=n_head, n_embd=C, dropout=0.0, bias=False,
                       position="rope", qk_norm=True, layer_norm_eps=1e-6, dtype="float32", dense_kernel="xla")
    kernels = {name: rng.normal(0.0, scale, (C, C)).astype(np.float32) for name in ("query", "key", "value", "proj")}
    norms = {name: rng.normal(1.0, 0.3, (hs,)).astype(np.float32) for name in ("q_norm", "k_norm")}
    params = {**{n: {"kernel": jnp.asarray(k)} for n, k in kernels.items()},
              **{n: {"scale": jnp.asarray(s)} for n, s in norms.items()}}
    x = rng.normal(0.0, 1.0, (B, T, C)).astype(np.float32)
    ours = np.asarray(CausalSelfAttention(config).apply({"params": params}, jnp.asarray(x)))

    qwen_config = Qwen3Config(hidden_size=C, num_attention_heads=n_head, num_key_value_heads=n_head, head_dim=hs,
                              attention_bias=False, rms_norm_eps=1e-6, max_position_embeddings=T,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    qwen_config._attn_implementation = "eager"
    qwen = Qwen3Attention(qwen_config, layer_idx=0).eval()
    with torch.no_grad():
        for jax_name, torch_name in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"), ("proj", "o_proj")):
            getattr(qwen, torch_name).weight.copy_(torch.from_numpy(kernels[jax_name].T))
        qwen.q_norm.weight.copy_(torch.from_numpy(norms["q_norm"]))
        qwen.k_norm.weight.copy_(torch.from_numpy(norms["k_norm"]))
        hidden = torch.from_numpy(x)
        cos_sin = Qwen3RotaryEmbedding(qwen_config)(hidden, torch.arange(T)[None])
        mask = torch.full((T, T), float("-inf")).triu(1)[None, None]  # (1, 1, T, T), additive
        expected = qwen(hidden, position_embeddings=cos_sin, attention_mask=mask)[0].numpy()
    assert np.abs(ours - expected).max() <= RTOL * scale_of(expected)


# ---------------------------------------------------------------------------------------------------------------
# whole models against the PyTorch reference (tests/test_parity.py's checks)


@st.composite
def modern_cases(draw) -> Case:
    """A model with random options: every modern switch and the GPT-2 family's, in any combination."""
    rope = draw(st.booleans())
    options = {
        "position": "rope" if rope else "learned",
        "rope_theta": draw(st.sampled_from([10000.0, 100.0])),
        "norm": draw(st.sampled_from(["layernorm", "rmsnorm"])),
        "qk_norm": draw(st.booleans()),
        "activation": draw(st.sampled_from(["relu", "gelu", "gelu_tanh", "relu2"])),
        "zero_init_proj": draw(st.booleans()),
        "logit_softcap": draw(st.sampled_from([0.0, 2.0, 30.0])),
        "qkv_bias": draw(st.booleans()),
        "lm_head_bias": draw(st.booleans()),
    }
    block_size = draw(st.integers(1, 64))
    return Case(
        layout="modern", vocab_size=draw(st.integers(2, 100)), block_size=block_size, n_layer=draw(st.integers(1, 3)),
        n_head=draw(st.integers(1, 4)), head_size=2 * draw(st.integers(1, 4)) if rope else draw(st.integers(1, 8)),
        T=draw(st.integers(1, block_size)), B=draw(st.integers(1, 4)), scale=draw(st.sampled_from(WEIGHT_SCALES)),
        seed=draw(st.integers(0, 2**32 - 1)), bias=draw(st.booleans()), tie_embeddings=draw(st.booleans()),
        options=tuple(sorted(options.items())),
    )


def modern_case(options: dict, bias: bool = True, tie_embeddings: bool = False, **sizes) -> Case:
    return Case("modern", **sizes, bias=bias, tie_embeddings=tie_embeddings, options=tuple(sorted(options.items())))


@settings(PARITY, max_examples=2 * EXAMPLES)
@given(case=modern_cases())
@example(case=modern_case({**ALL_ON, "lm_head_bias": False}, bias=False, tie_embeddings=True, vocab_size=13,
                          block_size=32, n_layer=2, n_head=2, head_size=4, T=29, B=2, scale=0.3, seed=1))
@example(case=modern_case({"qk_norm": True, "activation": "gelu", "logit_softcap": 2.0}, bias=False, vocab_size=5,
                          block_size=8, n_layer=1, n_head=3, head_size=3, T=8, B=3, scale=0.3, seed=2))
@example(case=modern_case({"position": "rope", "rope_theta": 100.0}, vocab_size=2, block_size=64, n_layer=1,
                          n_head=1, head_size=2, T=64, B=1, scale=0.3, seed=3))
def test_modern_gpt_matches_the_pytorch_reference(case):
    check_against_pytorch(case)


# ---------------------------------------------------------------------------------------------------------------
# sampling with RoPE


def float64_params(config: GPTConfig, seed: int = 0):
    """Random params (scale 0.3, so that zero_init_proj's zeros do not hide attention) in float64."""
    params = random_params(config, np.random.default_rng(seed), scale=0.3)
    return jax.tree_util.tree_map(lambda p: jnp.asarray(np.asarray(p), jnp.float64), params)


@pytest.mark.parametrize("options", [{"position": "rope"}, ALL_ON], ids=["rope", "all"])
@pytest.mark.parametrize(("batch", "prompt_len", "new"), [(2, 3, 5), (3, 1, 12)])  # within block_size; beyond it
def test_cached_sampler_with_rope_gives_the_recompute_samplers_tokens_in_float64(options, batch, prompt_len, new):
    """The KV cache holds keys rotated at positions cache_index + t; the recompute sampler rotates every window
    from 0. Both give the same tokens (beyond block_size both recompute the last block_size tokens)."""
    config = dataclasses.replace(TINY, **options)
    with jax.enable_x64(True):
        params = float64_params(config)
        assert GPT(config).apply({"params": params}, jnp.zeros((1, 2), jnp.int32)).dtype == jnp.float64
        prompt = jax.random.randint(jax.random.key(prompt_len), (batch, prompt_len), 0, config.vocab_size)
        key = jax.random.key(7)
        cached = generate(config, params, prompt, new, key, temperature=1.2)
        recomputed = generate_with_model(GPT(config), params, prompt, new, key, block_size=config.block_size,
                                         vocab_size=config.vocab_size, temperature=1.2)
    np.testing.assert_array_equal(cached, recomputed)
    assert len(np.unique(np.asarray(cached[:, prompt_len:]))) > 1  # a real sample, not one repeated token


def test_decode_steps_give_the_full_forward_logits():
    """A prefill of 5 tokens, then one token per decode call, gives the logits of one pass over all 16 tokens."""
    config = GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, **ALL_ON)
    params = random_params(config, np.random.default_rng(3), scale=0.3)
    context = jnp.asarray(np.random.default_rng(0).integers(0, 13, (2, 16)))
    expected = GPT(config).apply({"params": params}, context)

    @jax.jit
    def decode(cache, tokens):
        return GPT(config).apply({"params": params, **cache}, tokens, decode=True, mutable=["cache"])

    logits, cache = decode({}, context[:, :5])
    steps = [logits]
    for t in range(5, 16):
        logits, cache = decode(cache, context[:, t:t + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), expected, rtol=0, atol=RTOL * scale_of(expected))


# ---------------------------------------------------------------------------------------------------------------
# parameters, rules, refusals


def flat_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    return {"/".join(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def test_each_option_changes_the_parameter_tree_as_documented():
    base = flat_shapes(TINY)
    rope = flat_shapes(dataclasses.replace(TINY, position="rope"))
    assert base.keys() - rope.keys() == {"position_embedding_table/embedding"} and rope.keys() <= base.keys()
    rms = flat_shapes(dataclasses.replace(TINY, norm="rmsnorm"))  # a scale, no bias, even with bias=True
    assert base.keys() - rms.keys() == {f"{m}/bias" for m in ("blocks_0/ln1", "blocks_0/ln2", "blocks_1/ln1",
                                                               "blocks_1/ln2", "ln_f")}
    qk = flat_shapes(dataclasses.replace(TINY, qk_norm=True))
    assert {k: v for k, v in qk.items() if k not in base} == {
        f"blocks_{i}/sa/{n}/scale": (TINY.head_size,) for i in range(2) for n in ("q_norm", "k_norm")}
    for options in ({"activation": "relu2"}, {"zero_init_proj": True}, {"logit_softcap": 15.0}):
        assert flat_shapes(dataclasses.replace(TINY, **options)) == base, options


def test_zero_init_proj_zeroes_only_the_output_projections():
    params = init_params(dataclasses.replace(TINY, zero_init_proj=True), jax.random.key(0))
    default = init_params(TINY, jax.random.key(0))
    for i in range(TINY.n_layer):
        block = params[f"blocks_{i}"]
        assert not jnp.any(block["sa"]["proj"]["kernel"]) and not jnp.any(block["ffwd"]["proj"]["kernel"])
        for name in ("query", "key", "value"):
            np.testing.assert_array_equal(block["sa"][name]["kernel"], default[f"blocks_{i}"]["sa"][name]["kernel"])
        np.testing.assert_array_equal(block["ffwd"]["fc"]["kernel"], default[f"blocks_{i}"]["ffwd"]["fc"]["kernel"])


def test_scale_proj_init_narrows_only_the_output_projections():
    """GPT-2's init: the projections into the residual stream N(0, 0.02 / sqrt(2 * n_layer)), the rest as before."""
    config = dataclasses.replace(TINY, scale_proj_init=True)
    params, default = init_params(config, jax.random.key(0)), init_params(TINY, jax.random.key(0))
    scale = 1 / np.sqrt(2 * TINY.n_layer)  # the same draws, scaled: normal(stddev) is stddev * a standard normal
    for path, leaf in traverse_util.flatten_dict(params, sep="/").items():
        expected = traverse_util.flatten_dict(default, sep="/")[path]
        if path.endswith("proj/kernel"):
            expected = expected * scale
        np.testing.assert_allclose(leaf, expected, rtol=1e-6, err_msg=path)


def test_rope_model_has_the_lecture_count_less_the_position_table():
    rope = GPTConfig(position="rope")  # the lecture's sizes: 10,788,929 - 256 x 384
    assert count_params(jax.eval_shape(lambda: init_params(rope, jax.random.key(0)))) == 10_788_929 - 256 * 384


def test_softcap_bounds_float32_logits_and_is_tanh_of_the_raw_logits():
    config = dataclasses.replace(TINY, logit_softcap=2.0)
    params = random_params(config, np.random.default_rng(0), scale=0.3)
    idx = jnp.asarray(np.random.default_rng(1).integers(0, 11, (2, 8)))
    raw = GPT(TINY).apply({"params": params}, idx)
    capped = GPT(config).apply({"params": params}, idx)
    assert float(jnp.abs(raw).max()) > 2.0 and float(jnp.abs(capped).max()) < 2.0
    np.testing.assert_allclose(capped, 2.0 * np.tanh(np.asarray(raw, np.float64) / 2.0), rtol=1e-6, atol=1e-6)
    bf16 = dataclasses.replace(config, dtype="bfloat16")
    assert GPT(bf16).apply({"params": params}, idx).dtype == jnp.float32


def test_relu2_is_relu_squared():
    config = dataclasses.replace(TINY, activation="relu2")
    params = random_params(config, np.random.default_rng(0), scale=0.3)
    x = jnp.asarray(np.random.default_rng(1).normal(0.0, 1.0, (2, 3, 16)), jnp.float32)
    ffwd = params["blocks_0"]["ffwd"]
    ours = FeedForward(config.resolved()).apply({"params": ffwd}, x)
    hidden = np.asarray(x, np.float64) @ ffwd["fc"]["kernel"] + ffwd["fc"]["bias"]
    expected = np.maximum(hidden, 0.0) ** 2 @ ffwd["proj"]["kernel"] + ffwd["proj"]["bias"]
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"position": "rope", "n_embd": 18, "n_head": 2}, r"position='rope' .* must be even, got 18 / 2 = 9"),
        ({"position": "alibi"}, "position must be one of learned, rope"),
        ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm"),
        ({"activation": "swiglu"}, "activation must be one of relu, gelu, gelu_tanh, relu2"),
        ({"logit_softcap": -1.0}, "logit_softcap must not be negative"),
        ({"rope_theta": 0.0}, "rope_theta must be positive"),
        ({"qk_norm": 1}, "qk_norm must be true or false"),
        ({"zero_init_proj": True, "scale_proj_init": True}, "two inits of the same projections; set one"),
    ],
)
def test_bad_modern_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        GPTConfig(**kwargs)


@pytest.mark.parametrize(("name", "old", "new"), [("position", "learned", "rope"), ("rope_theta", 10000.0, 500.0),
                                                ("norm", "layernorm", "rmsnorm"), ("qk_norm", False, True),
                                                ("activation", "relu", "relu2"), ("zero_init_proj", False, True),
                                                ("logit_softcap", 0.0, 30.0)])
def test_resume_refuses_changing_a_modern_option(name, old, new):
    saved = TrainConfig(model=dataclasses.replace(TINY, **{"position": "rope", name: old}))
    current = dataclasses.replace(saved, model=dataclasses.replace(saved.model, **{name: new}))
    with pytest.raises(UsageError, match=f"cannot resume from ckpt: the config differs in {name} "):
        resume_changes(saved, current, "ckpt")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("change", [{"position": "rope"}, {"norm": "rmsnorm"}, {"qk_norm": True},
                                    {"logit_softcap": 15.0}, {"activation": "relu2"}],
                         ids=lambda change: next(iter(change)))
def test_conversion_refuses_options_the_pytorch_layouts_lack(layout, change):
    config = dataclasses.replace(TINY, **change)
    name, value = next(iter(change.items()))
    with pytest.raises(UsageError, match=rf"the {layout} layout needs (.*, )?{name}=.*; the config has .*"
                                         rf"{name}={value!r}"):
        to_torch_state_dict({}, config, layout)


def test_zero_init_proj_alone_converts():
    """Only the initialisation differs: the lecture's PyTorch model expresses the trained weights."""
    config = dataclasses.replace(TINY, zero_init_proj=True)
    state_dict = to_torch_state_dict(init_params(config, jax.random.key(0)), config, "lecture")
    assert not state_dict["blocks.0.sa.proj.weight"].any()


# ---------------------------------------------------------------------------------------------------------------
# the flags


def test_the_modern_flags_train_the_tiny_config(tmp_path, shakespeare_path):
    config = parse_train_args(["--config=tiny", "--position=rope", "--norm=rmsnorm", "--qk_norm=true",
                               "--activation=relu2", "--zero_init_proj=true", "--logit_softcap=15", "--max_iters=4",
                               "--eval_interval=2", "--eval_iters=1", f"--out_dir={tmp_path / 'run'}",
                               "--sample_chars=20", "--progress=false", f"--data_path={shakespeare_path}"])
    assert {name: getattr(config.model, name) for name in ALL_ON} == ALL_ON
    history = train(config).history
    assert [h["step"] for h in history] == [0, 2, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_loss"] < history[0]["val_loss"]
