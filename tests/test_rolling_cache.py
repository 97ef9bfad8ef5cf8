"""The rolling KV cache (`generate(..., cache="rolling")`, RoPE models only; jaxgpt/sample.py's docstring).

- in float64, its logits and tokens against a naive loop with the same semantics (each token's keys and values
  computed once, rotated at its absolute position, and attended to by the next block_size - 1 tokens), far
  beyond block_size, for a multi-layer model;
- for one layer, the recompute path's tokens and logits (the two semantics agree there exactly);
- for several layers, the recompute path's tokens while the context fits block_size, and other logits after;
- refused, with one line, for learned positions and the bigram.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from torch_models import random_params

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import GPT
from jaxgpt.core.sampling import Sampling, draw_token, generate, generate_cached, generate_with_model
from jaxgpt.system.errors import UsageError

W = 8  # block_size: the window
ROPE = GPTConfig(vocab_size=11, block_size=W, n_layer=3, n_head=2, n_embd=16, dropout=0.0, position="rope")
ALL_ON = {"norm": "rmsnorm", "qk_norm": True, "activation": "relu2", "logit_softcap": 15.0}  # RoPE with the rest
NEW = 40  # new tokens: five windows past block_size


def params_of(config: GPTConfig, dtype=jnp.float64, seed: int = 0):
    """Random params of scale 0.3 (attention far from uniform), in `dtype` (float64: call under enable_x64)."""
    params = random_params(config, np.random.default_rng(seed), scale=0.3)
    return jax.tree_util.tree_map(lambda p: jnp.asarray(np.asarray(p), dtype), params)


def layer_norm(x: np.ndarray, p: dict, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def rotate(x: np.ndarray, position: int, theta: float) -> np.ndarray:
    """RoPE of x (B, nh, hs) at `position`, angles computed in float64 at that position, however large."""
    half = x.shape[-1] // 2
    angles = position * theta ** (-np.arange(half) * 2 / (2 * half))  # (hs/2,)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles), x2 * np.cos(angles) + x1 * np.sin(angles)], -1)


class NaiveRollingGPT:
    """The lecture's GPT with RoPE, one token at a time, in numpy float64: each layer keeps a list of every token's
    key (rotated at its absolute position) and value, computed once when the token is fed; a token attends to
    the last block_size entries, its own included."""

    def __init__(self, config: GPTConfig, params):
        self.config, self.p = config, jax.tree_util.tree_map(np.asarray, params)
        self.keys = [[] for _ in range(config.n_layer)]
        self.values = [[] for _ in range(config.n_layer)]
        self.position = 0

    def feed(self, token: np.ndarray) -> np.ndarray:
        """Tokens (B,) at the next position -> the logits of the token after them (B, V)."""
        cfg, p, eps = self.config, self.p, self.config.layer_norm_eps
        x = p["token_embedding_table"]["embedding"][token]  # (B, C)
        B, nh, hs = x.shape[0], cfg.n_head, cfg.head_size
        for layer in range(cfg.n_layer):
            block, keys, values = p[f"blocks_{layer}"], self.keys[layer], self.values[layer]
            h = layer_norm(x, block["ln1"], eps)
            q, k, v = (h @ block["sa"][name]["kernel"] for name in ("query", "key", "value"))  # (B, C) each
            keys.append(rotate(k.reshape(B, nh, hs), self.position, cfg.rope_theta))
            values.append(v.reshape(B, nh, hs))
            window_k = np.stack(keys[-cfg.block_size:], axis=2)  # (B, nh, <= block_size, hs)
            window_v = np.stack(values[-cfg.block_size:], axis=2)
            scores = np.einsum("bhd,bhsd->bhs", rotate(q.reshape(B, nh, hs), self.position, cfg.rope_theta),
                               window_k) / np.sqrt(hs)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            out = np.einsum("bhs,bhsd->bhd", weights, window_v).reshape(B, nh * hs)
            x = x + out @ block["sa"]["proj"]["kernel"] + block["sa"]["proj"]["bias"]
            ffwd = block["ffwd"]
            hidden = np.maximum(layer_norm(x, block["ln2"], eps) @ ffwd["fc"]["kernel"] + ffwd["fc"]["bias"], 0.0)
            x = x + hidden @ ffwd["proj"]["kernel"] + ffwd["proj"]["bias"]
        self.position += 1
        return layer_norm(x, p["ln_f"], eps) @ p["lm_head"]["kernel"] + p["lm_head"]["bias"]


def naive_rolling_generate(config: GPTConfig, params, prompt, new: int, key, temperature: float):
    """-> (tokens (B, T0 + new), logits (B, new, V)): the prompt cropped to block_size (as `generate` does), then
    new token i drawn from the last logits with fold_in(key, i), as the key rule says."""
    model, prompt = NaiveRollingGPT(config, params), np.asarray(prompt)
    for column in prompt[:, -config.block_size:].T:
        logits = model.feed(column)
    how, tokens, history = Sampling.of(config.vocab_size, temperature, None, None), [prompt], []
    for i in range(new):
        history.append(logits)
        token = np.asarray(draw_token(jnp.asarray(logits), jax.random.fold_in(key, i), how))
        tokens.append(token[:, None])
        logits = model.feed(token)
    return np.concatenate(tokens, axis=1), np.stack(history, axis=1)


@functools.partial(jax.jit, static_argnames=("config", "decode"))
def decode_step(config: GPTConfig, params, cache, idx, decode):
    return GPT(config).apply({"params": params, **cache}, idx, decode=decode, mutable=["cache"])


def decode_logits(config: GPTConfig, params, tokens, prompt_len: int, rolling_from: int) -> np.ndarray:
    """GPT's decode path driven like the sampler: a prefill of the prompt (decode=True), one token per call with
    decode=True while its position is < rolling_from, then decode="rolling" -> the logits of the tokens after
    positions prompt_len - 1 .. T - 2: (B, T - prompt_len, V)."""
    logits, cache = decode_step(config, params, {}, tokens[:, :prompt_len], True)
    steps = [logits[:, -1]]
    for t in range(prompt_len, tokens.shape[1] - 1):
        logits, cache = decode_step(config, params, cache, tokens[:, t:t + 1], True if t < rolling_from else "rolling")
        steps.append(logits[:, -1])
    return np.stack(steps, axis=1)


@functools.partial(jax.jit, static_argnames=("config", "prompt_len"))
def recompute_logits(config: GPTConfig, params, tokens, prompt_len: int) -> jax.Array:
    """The lecture's logits: the model rerun on the last <= block_size tokens -> (B, T - prompt_len, V), all the
    windows in one batch (the first ones start at 0 and read the logits of an earlier position)."""
    B, T = tokens.shape
    ends = np.arange(prompt_len, T)  # each context is tokens[start:end]
    starts = np.clip(ends - config.block_size, 0, T - config.block_size)  # (n,)
    windows = jnp.stack([tokens[:, s:s + config.block_size] for s in starts], axis=1)  # (B, n, block_size)
    logits = GPT(config).apply({"params": params}, windows.reshape(-1, config.block_size))  # (B * n, block_size, V)
    logits = logits.reshape(B, len(ends), config.block_size, -1)
    return logits[:, np.arange(len(ends)), ends - 1 - starts]


@pytest.mark.parametrize(("batch", "prompt_len"), [(3, 1), (2, 11)])  # the ring fills; prompt > block_size
def test_rolling_sampler_gives_the_naive_rolling_loops_tokens_and_logits_in_float64(batch, prompt_len):
    """Multi-layer, five windows past block_size. The logits come from the model's decode path driven like the
    sampler (ring from position block_size on) and, as well, with the ring from the prefill on (not yet full).
    From a 1-token prompt the cache first grows in 4 steps (as the sampler grows larger blocks'), then rolls."""
    with jax.enable_x64(True):
        params = params_of(ROPE)
        prompt = jax.random.randint(jax.random.key(prompt_len), (batch, prompt_len), 0, ROPE.vocab_size)
        key = jax.random.key(3)
        if prompt_len == 1:
            tokens = generate_cached(ROPE, params, prompt.astype(jnp.int32), key,
                                      Sampling.of(ROPE.vocab_size, 1.5, None, None),
                                      max_new_tokens=NEW, cache="rolling", cache_sizes=(2, 4, 6, 8))
        else:
            tokens = generate(ROPE, params, prompt, NEW, key, temperature=1.5, cache="rolling")
        expected, expected_logits = naive_rolling_generate(ROPE, params, prompt, NEW, key, 1.5)
        kept = min(prompt_len, W)  # the sampler prefills the prompt's last block_size tokens
        stream = tokens[:, prompt_len - kept:]
        as_sampled, ring_throughout = (decode_logits(ROPE, params, stream, kept, rolling_from=start)
                                       for start in (W, 0))
    np.testing.assert_array_equal(tokens, expected)
    assert len(np.unique(expected[:, prompt_len:])) > 3  # a real sample, not one repeated token
    np.testing.assert_allclose(as_sampled, expected_logits, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ring_throughout, expected_logits, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("options", "prompt_len"), [({}, 1), (ALL_ON, 11)], ids=["rope", "rope+rest"])
def test_one_layer_rolling_gives_the_recompute_paths_tokens_and_logits_in_float64(options, prompt_len):
    """One layer: a key or value depends on its own token only, and RoPE scores on offsets only, so the window's
    cached keys and values are the recomputed ones: the two semantics agree, far beyond block_size."""
    config = dataclasses.replace(ROPE, n_layer=1, **options)
    with jax.enable_x64(True):
        params = params_of(config)
        prompt = jax.random.randint(jax.random.key(prompt_len), (3, prompt_len), 0, config.vocab_size)
        key = jax.random.key(5)
        rolling = generate(config, params, prompt, NEW, key, temperature=1.5, cache="rolling")
        recompute = generate_with_model(GPT(config), params, prompt, NEW, key, block_size=W,
                                        vocab_size=config.vocab_size, temperature=1.5)  # the lecture's loop
        kept = min(prompt_len, W)
        stream = rolling[:, prompt_len - kept:]
        logits = decode_logits(config, params, stream, kept, rolling_from=W)
        expected = recompute_logits(config, params, stream, kept)
    np.testing.assert_array_equal(rolling, recompute)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prompt_len", [1, 6])
def test_several_layers_give_the_recompute_paths_tokens_within_block_size_then_other_logits(prompt_len):
    """In float32, as sampled: new tokens whose context fits block_size are the same in both modes (the same
    compiled steps and key rule). Past it, the same context gives other logits: from the second layer on, the
    kept tokens' cached keys and values saw the dropped tokens, the recomputed ones do not."""
    params = params_of(ROPE, jnp.float32)
    prompt = jax.random.randint(jax.random.key(prompt_len), (4, prompt_len), 0, ROPE.vocab_size)
    key = jax.random.key(9)
    rolling = generate(ROPE, params, prompt, NEW, key, cache="rolling")
    recompute = generate(ROPE, params, prompt, NEW, key)
    fits = W - prompt_len + 1  # new tokens whose context is <= block_size
    np.testing.assert_array_equal(rolling[:, :prompt_len + fits], recompute[:, :prompt_len + fits])
    assert (rolling != recompute).any()
    gap = np.abs(decode_logits(ROPE, params, rolling, prompt_len, rolling_from=W)
                 - recompute_logits(ROPE, params, rolling, prompt_len)).max(axis=(0, 2))  # (NEW,) per new token
    assert gap[:fits].max() < 1e-4 and gap[fits:].min() > 1e-2, gap


@pytest.mark.parametrize(("config", "got"), [
    (dataclasses.replace(ROPE, position="learned"), "model_type='gpt', position='learned'"),
    (GPTConfig(vocab_size=11, model_type="bigram"), "model_type='bigram', position='learned'"),
])
def test_rolling_is_refused_without_rotary_positions(config, got):
    message = rf"^cache='rolling' needs a GPT with rotary positions \(position='rope'\), got {got}; use "
    with pytest.raises(UsageError, match=message + "cache='recompute', the default$"):  # params=None: not compiled
        generate(config, None, [[1]], 20, jax.random.key(0), cache="rolling")


@pytest.mark.parametrize("cache", ["ring", None, True])
def test_unknown_cache_modes_are_refused(cache):
    with pytest.raises(UsageError, match=f"^cache must be one of recompute, rolling, got {cache!r}$"):
        generate(ROPE, None, [[1]], 20, jax.random.key(0), cache=cache)


@pytest.mark.parametrize(("change", "length", "message"), [
    ({}, 2, "got 2 tokens, position='rope'"),
    ({"position": "learned"}, 1, "got 1 tokens, position='learned'"),
])
def test_rolling_decode_takes_one_token_of_a_rotary_model(change, length, message):
    config = dataclasses.replace(ROPE, **change)
    with pytest.raises(UsageError, match=r"^decode='rolling' takes one token per call of a model with "
                                         r"position='rope', " + message):
        GPT(config).apply({"params": params_of(config, jnp.float32)}, jnp.zeros((1, length), jnp.int32),
                          decode="rolling", mutable=["cache"])
