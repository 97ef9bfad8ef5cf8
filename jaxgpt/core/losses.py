"""Losses: next-token cross-entropy (the lecture's `F.cross_entropy`), and the sums that add up over batches into
a split's mean loss and bits per byte."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt.core.model import LanguageModel, mesh_context
from jaxgpt.system.sharding import Placement


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """(B, T) next-token cross-entropies of logits (B, T, V), computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy, as F.cross_entropy on (B*T, V), computed in float32."""
    return token_losses(logits, targets).mean()


def split_sums(logits: jax.Array, targets: jax.Array, counted: jax.Array, token_bytes: jax.Array) -> jax.Array:
    """(4,) float32 sums over the `counted` positions of logits (B, T, V) and targets (B, T): the loss, the
    tokens, the loss of the targets that stand for text bytes (not special tokens) and those bytes. They add up
    over batches into the mean loss (sum / tokens) and the bits per byte (sum / (ln 2 * bytes))."""
    losses = token_losses(logits, targets)  # (B, T)
    n_bytes = jnp.where(counted, token_bytes[targets], 0).astype(jnp.float32)  # (B, T)
    return jnp.stack([jnp.where(counted, losses, 0.0).sum(), counted.sum().astype(jnp.float32),
                      jnp.where(n_bytes > 0, losses, 0.0).sum(), n_bytes.sum()])


def loss_and_bpb(sums) -> tuple[float, float]:
    """(mean loss in nats per token, bits per UTF-8 byte) from `split_sums` added up."""
    loss_sum, tokens, byte_loss_sum, n_bytes = (float(v) for v in np.asarray(sums, np.float64))
    return loss_sum / tokens, byte_loss_sum / (math.log(2) * n_bytes) if n_bytes else math.nan


def make_split_sums(model: LanguageModel, placement: Placement) -> Callable:
    """params, windows (I, B, T + 1), counted (I, B, T), token_bytes (V,) -> `split_sums` over the I batches
    (dropout off), one compiled call; `counted` marks the positions whose target is scored."""

    @jax.jit
    def sums_of_batches(params, windows: jax.Array, counted: jax.Array, token_bytes: jax.Array) -> jax.Array:
        def add_batch(total, batch):
            windows, counted = batch
            x, y = placement.constrain_batch(windows[:, :-1], windows[:, 1:])  # (B, T) each
            return total + split_sums(model.apply({"params": params}, x), y, counted, token_bytes), None

        with mesh_context(model, placement.mesh):
            total, _ = jax.lax.scan(add_batch, jnp.zeros(4, jnp.float32), (windows, counted))
        return total

    return sums_of_batches
