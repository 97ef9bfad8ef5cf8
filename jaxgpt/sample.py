"""Sampling text from a trained model, every random draw controlled by a PRNG key.

The new token at position i (0-based among the new tokens) is drawn as
`jax.random.categorical(jax.random.fold_in(key, i), filtered_logits / temperature)`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgpt.errors import UsageError
from jaxgpt.model import GPT, GPTConfig


def filter_logits(logits: jax.Array, top_k: int | None = None, top_p: float | None = None) -> jax.Array:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. logits: (B, V)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]  # (B, 1)
        logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]  # (B, V), descending
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked above
        kept = mass_before < top_p  # the smallest prefix whose mass reaches top_p
        threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # (B, 1)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def draw_token(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None,
               top_p: float | None) -> jax.Array:
    """One token per row of logits (B, V) -> (B,); temperature 0 is greedy."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, top_k, top_p)
    return jax.random.categorical(key, filtered / temperature, axis=-1).astype(jnp.int32)


def check_generate_args(prompt: jax.Array, max_new_tokens: int, vocab_size: int, temperature: float,
                        top_k: int | None, top_p: float | None) -> None:
    """Reject bad arguments with a clear message before anything is compiled."""
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise UsageError(f"prompt must be int tokens of shape (B, T0) with T0 >= 1, got shape {prompt.shape}")
    if max_new_tokens < 0:
        raise UsageError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UsageError(f"top_p must be in (0, 1], got {top_p}")
    if prompt.size and (int(prompt.min()) < 0 or int(prompt.max()) >= vocab_size):
        low, high = int(prompt.min()), int(prompt.max())
        raise UsageError(f"prompt token ids must be in [0, {vocab_size}), got values in [{low}, {high}]")


@functools.partial(jax.jit, static_argnames=("model", "block_size", "max_new_tokens", "temperature", "top_k", "top_p"))
def _generate_recompute(model: nn.Module, params, prompt: jax.Array, key: jax.Array, *, block_size: int,
                        max_new_tokens: int, temperature: float, top_k: int | None,
                        top_p: float | None) -> jax.Array:
    """The lecture's generate as one compiled loop: each step reruns the model on the cropped context."""
    B, T0 = prompt.shape
    total = T0 + max_new_tokens
    window = min(block_size, total)  # static context width fed to the model
    tokens = jnp.zeros((B, total), jnp.int32).at[:, :T0].set(prompt)  # (B, T0 + new)

    def step(tokens, i):
        length = T0 + i  # tokens known so far
        start = jnp.maximum(length - window, 0)  # crop to the last block_size tokens
        context = jax.lax.dynamic_slice_in_dim(tokens, start, window, axis=1)  # (B, window)
        logits = model.apply({"params": params}, context)  # (B, window, V)
        last = jax.lax.dynamic_index_in_dim(logits, length - 1 - start, axis=1, keepdims=False)  # (B, V)
        new = draw_token(last.astype(jnp.float32), jax.random.fold_in(key, i), temperature, top_k, top_p)
        return jax.lax.dynamic_update_slice_in_dim(tokens, new[:, None], length, axis=1), None

    tokens, _ = jax.lax.scan(step, tokens, jnp.arange(max_new_tokens))
    return tokens


def generate_with_model(model: nn.Module, params, prompt: jax.Array, max_new_tokens: int, key: jax.Array, *,
                        block_size: int, vocab_size: int, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None) -> jax.Array:
    """Sample from any model mapping (B, T) tokens to (B, T, V) logits, conditioning on <= block_size tokens."""
    prompt = jnp.asarray(prompt, jnp.int32)
    check_generate_args(prompt, max_new_tokens, vocab_size, temperature, top_k, top_p)
    return _generate_recompute(model, params, prompt, key, block_size=block_size, max_new_tokens=max_new_tokens,
                               temperature=float(temperature), top_k=top_k, top_p=top_p)


def generate(config: GPTConfig, params, prompt: jax.Array, max_new_tokens: int, key: jax.Array, *,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> jax.Array:
    """Continue each row of `prompt` (B, T0) by `max_new_tokens` tokens -> (B, T0 + max_new_tokens)."""
    return generate_with_model(GPT(config), params, prompt, max_new_tokens, key, block_size=config.block_size,
                               vocab_size=config.vocab_size, temperature=temperature, top_k=top_k, top_p=top_p)
