"""Sampling text from a model (the command line is `python -m jaxgpt.sample`, jaxgpt/sample.py).

The key rule: new token i (0-based) is `jax.random.categorical(fold_in(key, i), filtered_logits / temperature)`,
the top-k / top-p filters acting on the raw logits; temperature 0 takes the argmax. Both samplers follow it, so
they give the same tokens for the same key:

- `generate`: a prefill pass fills a per-layer KV cache, then a `lax.scan` feeds one token per step. The cache
  grows to block_size in up to KV_CACHE_GROWTH sizes (attention reads about the positions in use). Beyond
  block_size, `cache="recompute"` (the lecture's semantics, the default) reruns the model on the last block_size
  tokens each step; `cache="rolling"` (RoPE models) keeps the cache as a ring buffer and recomputes nothing,
  which equals recompute for one layer only (docs/sampling.md measures the drift and the speed).
- `generate_with_model` (any model): the lecture's loop, the exactness reference for `generate`'s default.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Literal, NamedTuple, get_args

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt.core.config import INT32_MAX, GPTConfig
from jaxgpt.core.model import Decode, build_model, check_tokens, has_rolling_cache
from jaxgpt.system.errors import UsageError

# The KV cache grows to block_size in equal steps. More steps: less cache read per token, one more scan body to
# compile each (lecture config on CPU, 1 -> 4 sizes: ~40% more tokens/s, ~2 s more compile time). A step of fewer
# than KV_CACHE_MIN_STEP positions saves milliseconds per sample and costs seconds to compile (docs/sampling.md).
KV_CACHE_GROWTH = 4  # the most sizes
KV_CACHE_MIN_STEP = 64  # the fewest positions per step
Cache = Literal["recompute", "rolling"]  # what `generate` does beyond block_size (module docstring)
# Temperatures other than 0 are kept where float32 logits / temperature stays finite: nearer 0 it overflows, and
# beyond the top the division by an infinite float32 turns filtered-out logits (-inf) into NaN.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 1e4


class Sampling(NamedTuple):
    """How tokens are drawn, as arrays: changing them reuses the compiled sampler."""

    temperature: jax.Array  # () float32; 0 means greedy
    top_k: jax.Array  # () int32; vocab_size keeps every token
    top_p: jax.Array  # () float32; 1 keeps every token

    @classmethod
    def of(cls, vocab_size: int, temperature: float, top_k: int | None, top_p: float | None) -> Sampling:
        top_k = vocab_size if top_k is None else min(top_k, vocab_size)
        return cls(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(1.0 if top_p is None else top_p))


def filter_logits(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Set to -inf every logit outside the top-k, then outside the top-p nucleus of what is left. logits: (B, V)."""
    V = logits.shape[-1]
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # (B, V), descending
    in_top_k = jnp.arange(V) < top_k
    probs = jax.nn.softmax(jnp.where(in_top_k, sorted_logits, -jnp.inf), axis=-1)  # renormalised over the top-k
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
    in_nucleus = (mass_before < top_p) | (top_p >= 1.0)  # the smallest prefix whose mass reaches top_p
    kept = in_top_k & in_nucleus  # a prefix of the sorted logits
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # (B, 1), ties stay
    return jnp.where(logits < threshold, -jnp.inf, logits)


def draw_token(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row of logits (B, V) -> (B,), drawn in float32; temperature 0 is greedy."""
    logits = logits.astype(jnp.float32)
    greedy = sampling.temperature == 0
    filtered = filter_logits(logits, sampling.top_k, sampling.top_p)
    drawn = jax.random.categorical(key, filtered / jnp.where(greedy, 1.0, sampling.temperature), axis=-1)
    return jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_generate_args(prompt, max_new_tokens: int, key: jax.Array, vocab_size: int, temperature: float,
                        top_k: int | None, top_p: float | None) -> jax.Array:
    """Reject bad arguments with a clear message before anything is compiled; returns the prompt as int32."""
    prompt = jnp.asarray(check_tokens(prompt, vocab_size, "prompt"))
    if prompt.ndim != 2 or prompt.shape[0] < 1 or prompt.shape[1] < 1:
        raise UsageError(f"prompt must be int tokens of shape (B, T0) with B, T0 >= 1, got shape {prompt.shape}")
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise UsageError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if prompt.shape[1] + max_new_tokens > INT32_MAX:
        raise UsageError(f"max_new_tokens must be at most {INT32_MAX - prompt.shape[1]:,} (with the prompt's "
                         f"{prompt.shape[1]} tokens, positions are int32), got {max_new_tokens:,}")
    typed_key = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()
    raw_key = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed_key or raw_key):
        raise UsageError(f"key must be one PRNG key such as jax.random.key(0), got {key!r}")
    if not _is_real(temperature) or not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise UsageError(f"temperature must be 0 (greedy) or a number in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] "
                         f"(beyond, float32 logits / temperature overflow), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise UsageError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (not _is_real(top_p) or not 0.0 < top_p <= 1.0):
        raise UsageError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
    return prompt


def token_buffer(prompt: jax.Array, max_new_tokens: int) -> jax.Array:
    """The prompt followed by room for the new tokens: (B, T0 + max_new_tokens)."""
    B, T0 = prompt.shape
    return jnp.zeros((B, T0 + max_new_tokens), jnp.int32).at[:, :T0].set(prompt)


def recompute_step(model: nn.Module, params, key: jax.Array, sampling: Sampling, prompt_len: jax.Array | int,
                   block_size: int, tokens: jax.Array, i: jax.Array) -> jax.Array:
    """Fill in new token i of `tokens` (B, prompt_len + max_new_tokens) from the model rerun on the last
    <= block_size tokens before it."""
    window = min(block_size, tokens.shape[1])  # static context width fed to the model
    length = prompt_len + i  # tokens known so far
    start = jnp.maximum(length - window, 0)  # crop to the last block_size tokens
    context = jax.lax.dynamic_slice_in_dim(tokens, start, window, axis=1)  # (B, window)
    logits = model.apply({"params": params}, context)  # (B, window, V); causal: padding after length is unseen
    last = jax.lax.dynamic_index_in_dim(logits, length - 1 - start, axis=1, keepdims=False)  # (B, V)
    new = draw_token(last, jax.random.fold_in(key, i), sampling)  # (B,)
    return jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], length, axis=1)


def _recompute_steps(model: nn.Module, params, tokens: jax.Array, key: jax.Array, sampling: Sampling, *,
                     prompt_len: int, block_size: int, steps: range) -> jax.Array:
    """Fill in new tokens i for i in `steps`, each from the model rerun on the last <= block_size tokens."""
    step = functools.partial(recompute_step, model, params, key, sampling, prompt_len, block_size)
    tokens, _ = jax.lax.scan(lambda tokens, i: (step(tokens, i), None), tokens, jnp.arange(steps.start, steps.stop))
    return tokens


@functools.partial(jax.jit, static_argnames=("model", "block_size", "max_new_tokens"))
def _generate_recompute(model: nn.Module, params, prompt: jax.Array, key: jax.Array, sampling: Sampling, *,
                        block_size: int, max_new_tokens: int) -> jax.Array:
    """The lecture's generate as one compiled loop: each step reruns the model on the cropped context."""
    tokens = token_buffer(prompt, max_new_tokens)
    return _recompute_steps(model, params, tokens, key, sampling, prompt_len=prompt.shape[1], block_size=block_size,
                            steps=range(max_new_tokens))


def kv_cache_sizes(block_size: int) -> list[int]:
    """The sizes (positions) the sampler's KV cache grows through: equal steps to block_size, at most
    KV_CACHE_GROWTH of them and at least KV_CACHE_MIN_STEP positions each (so one size below block_size 128)."""
    steps = max(1, min(KV_CACHE_GROWTH, block_size // KV_CACHE_MIN_STEP))
    return sorted({-(-block_size * step // steps) for step in range(1, steps + 1)})


def resize_cache(cache, size: int):
    """The 'cache' collection with every layer's keys and values (B, nh, S, hs) cut or zero-padded to `size`."""
    def resize(x: jax.Array) -> jax.Array:
        if x.ndim != 4:  # the token count
            return x
        return x[:, :, :size] if size <= x.shape[2] else jnp.pad(x, ((0, 0), (0, 0), (0, size - x.shape[2]), (0, 0)))

    return jax.tree_util.tree_map(resize, cache)


def decode_step(model: nn.Module, params, key: jax.Array, sampling: Sampling, prompt_len: jax.Array | int,
                carry: tuple[jax.Array, Any], i: jax.Array, decode: Decode = True) -> tuple[jax.Array, Any]:
    """New token i: feed token i - 1 (position prompt_len + i - 1 of the (B, prompt_len + max_new_tokens) tokens)
    into the KV cache and draw from its logits. carry: (tokens, the 'cache' collection)."""
    tokens, kv = carry
    previous = jax.lax.dynamic_slice_in_dim(tokens, prompt_len + i - 1, 1, axis=1)  # (B, 1)
    logits, variables = model.apply({"params": params, "cache": kv}, previous, decode=decode,
                                    mutable=["cache"])  # (B, 1, V)
    new = draw_token(logits[:, -1], jax.random.fold_in(key, i), sampling)  # (B,)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], prompt_len + i, axis=1)
    return tokens, variables.get("cache", {})


def prefill(model: nn.Module, params, prompt: jax.Array, key: jax.Array, sampling: Sampling, block_size: int,
            max_new_tokens: int, prompt_len: jax.Array | None = None) -> tuple[jax.Array, Any]:
    """The last block_size prompt tokens (the lecture's crop) fill the KV cache and give new token 0 ->
    (tokens (B, T0 + max_new_tokens) with the prompt and token 0, the 'cache' collection).

    With `prompt_len` (an array: one program for every length), only the first prompt_len tokens of `prompt`
    (B, P <= block_size) are the prompt and the rest is padding: causal attention keeps it out of their logits,
    and the cache's index set to prompt_len lets decoding overwrite it."""
    context = prompt[:, -block_size:] if prompt_len is None else prompt  # (B, T, ...)
    logits, variables = model.apply({"params": params}, context, decode=True, mutable=["cache"])  # (B, T, V)
    last = logits.shape[1] - 1 if prompt_len is None else prompt_len - 1
    first = draw_token(jax.lax.dynamic_index_in_dim(logits, last, axis=1, keepdims=False),
                       jax.random.fold_in(key, 0), sampling)  # (B,)
    at = prompt.shape[1] if prompt_len is None else prompt_len
    tokens = jax.lax.dynamic_update_slice_in_dim(token_buffer(prompt, max_new_tokens), first[:, None], at, axis=1)
    kv = variables.get("cache", {})  # the bigram model keeps none
    return tokens, {**kv, "index": prompt_len} if kv and prompt_len is not None else kv


def cached_steps(cache_sizes: tuple[int, ...], prompt_len: int, max_new_tokens: int) -> list[tuple[int, range]]:
    """The new tokens decoded into the KV cache, by the cache size (positions; the last is block_size) they are
    decoded at. Token 0 comes from the prefill; those after the last range, whose context no longer fits
    block_size, from `recompute_step` or a rolling cache."""
    n_cached = min(max_new_tokens, max(cache_sizes[-1] - prompt_len, 0) + 1)  # new tokens whose context fits
    plan, start = [], 1
    for size in cache_sizes:  # attention reads only that many
        stop = min(n_cached, size - prompt_len + 1)  # new token i reads and writes cache positions < T0 + i
        if start < stop:
            plan.append((size, range(start, stop)))
            start = stop
    return plan


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "cache", "cache_sizes"))
def generate_cached(config: GPTConfig, params, prompt: jax.Array, key: jax.Array, sampling: Sampling, *,
                     max_new_tokens: int, cache: Cache, cache_sizes: tuple[int, ...]) -> jax.Array:
    """Prefill the KV cache, decode one token per step while the context fits (growing the cache through
    `cache_sizes`, the last one block_size), then recompute per token or (cache="rolling") go on decoding into the
    KV cache as a ring buffer."""
    model, T0 = build_model(config), prompt.shape[1]
    tokens, kv = prefill(model, params, prompt, key, sampling, config.block_size, max_new_tokens)

    def cached_step(carry, i, decode: Decode = True):
        return decode_step(model, params, key, sampling, T0, carry, i, decode), None

    n_cached = 1  # new tokens drawn so far
    for size, steps in cached_steps(cache_sizes, T0, max_new_tokens):  # one scan per cache size
        carry = (tokens, resize_cache(kv, size))
        (tokens, kv), _ = jax.lax.scan(cached_step, carry, jnp.arange(steps.start, steps.stop))
        n_cached = steps.stop
    if cache == "rolling":  # beyond block_size: decode on, the full-size cache (the prefill's or the last scan's)
        rolling_step = functools.partial(cached_step, decode="rolling")  # now a ring buffer (module docstring)
        (tokens, _), _ = jax.lax.scan(rolling_step, (tokens, kv), jnp.arange(n_cached, max_new_tokens))
        return tokens
    # beyond block_size: every kept token's position shifts, so the window is recomputed for each new token
    return _recompute_steps(model, params, tokens, key, sampling, prompt_len=T0, block_size=config.block_size,
                            steps=range(n_cached, max_new_tokens))


def generate_with_model(model: nn.Module, params, prompt: jax.Array, max_new_tokens: int, key: jax.Array, *,
                        block_size: int, vocab_size: int, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None) -> jax.Array:
    """Sample from any model mapping (B, T) tokens to (B, T, V) logits, rerunning it on <= block_size tokens."""
    prompt = check_generate_args(prompt, max_new_tokens, key, vocab_size, temperature, top_k, top_p)
    if max_new_tokens == 0:
        return prompt
    return _generate_recompute(model, params, prompt, key, Sampling.of(vocab_size, temperature, top_k, top_p),
                               block_size=block_size, max_new_tokens=int(max_new_tokens))


def check_cache(config: GPTConfig, cache: Cache) -> None:
    """UsageError unless `cache` is a mode that `config`'s model can sample with."""
    if not isinstance(cache, str) or cache not in get_args(Cache):
        raise UsageError(f"cache must be one of {', '.join(get_args(Cache))}, got {cache!r}")
    if cache == "rolling" and not has_rolling_cache(config):
        raise UsageError(f"cache='rolling' needs a GPT with rotary positions (position='rope'), got "
                         f"model_type={config.model_type!r}, position={config.position!r}; use cache='recompute', "
                         "the default")


def generate(config: GPTConfig, params, prompt: jax.Array, max_new_tokens: int, key: jax.Array, *,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             cache: Cache = "recompute") -> jax.Array:
    """Continue each row of `prompt` (B, T0) by `max_new_tokens` tokens -> (B, T0 + max_new_tokens), KV-cached,
    with the model that `config` describes (`config.model_type`).

    `cache` says what happens beyond block_size: "recompute" (the lecture's semantics) or "rolling" (RoPE
    models: a sliding window of cached keys and values); see the module docstring. Compiled once per (config,
    prompt shape, max_new_tokens, cache); other keys and sampling settings reuse it.
    """
    prompt = check_generate_args(prompt, max_new_tokens, key, config.vocab_size, temperature, top_k, top_p)
    check_cache(config, cache)
    if max_new_tokens == 0:
        return prompt
    return generate_cached(config, params, prompt, key, Sampling.of(config.vocab_size, temperature, top_k, top_p),
                           **cached_program_options(config, max_new_tokens, cache))


def cached_program_options(config: GPTConfig, max_new_tokens: int, cache: Cache) -> dict[str, Any]:
    """`generate_cached`'s static arguments: what its program is compiled for."""
    return {"max_new_tokens": int(max_new_tokens), "cache": cache,
            "cache_sizes": tuple(kv_cache_sizes(config.block_size))}
