"""The optimizer: AdamW with PyTorch's defaults, or Muon for the hidden weight matrices and AdamW for the rest;
an optional warmup + cosine schedule, clipping, decay mask."""

from __future__ import annotations

import functools

import jax
import optax

from jaxgpt.core import muon as stacked_muon
from jaxgpt.core.config import TrainConfig


def learning_rate_schedule(config: TrainConfig, peak: float | None = None) -> optax.Schedule:
    """Constant, or cosine decay to `min_lr` over `max_iters`; either after `warmup_iters` of linear warmup, from 0
    (step i at peak * i / warmup_iters) or, with `warmup="nanogpt"`, nanoGPT's peak * (i + 1) / (warmup_iters + 1).

    `peak` (default `learning_rate`) scales the whole schedule: Muon's is this shape with peak `muon_lr`, ending
    at `min_lr * muon_lr / learning_rate`."""
    peak, end = ((config.learning_rate, config.min_lr) if peak is None
                 else (peak, config.min_lr * peak / config.learning_rate))
    start = peak / (config.warmup_iters + 1) if config.warmup == "nanogpt" else 0.0  # lr at step 0 of the warmup
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=start,
            peak_value=peak,
            warmup_steps=config.warmup_iters,
            decay_steps=max(config.max_iters, config.warmup_iters + 1),
            end_value=end,
        )
    if config.warmup_iters:
        warmup = optax.linear_schedule(start, peak, config.warmup_iters)
        return optax.join_schedules([warmup, optax.constant_schedule(peak)], [config.warmup_iters])
    return optax.constant_schedule(peak)


def decay_mask(params, embeddings: bool = False) -> object:
    """True for matrices (Dense kernels, and with `embeddings` the embedding tables: nanoGPT's every tensor of 2
    or more dimensions); False for biases, norm scales and, without `embeddings`, the embedding tables."""

    def is_decayed(path, leaf) -> bool:
        names = [getattr(k, "key", "") for k in path]
        return leaf.ndim >= 2 and (embeddings or "embedding" not in names)

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def muon_mask(params) -> object:
    """True for the transformer blocks' weight matrices (attention query/key/value/proj and MLP kernels), which
    Muon updates; False for the embeddings, lm_head and every vector (biases, norm scales), which AdamW updates."""

    def is_hidden_matrix(path, leaf) -> bool:
        return leaf.ndim == 2 and str(getattr(path[0], "key", "")).startswith("blocks_")

    return jax.tree_util.tree_map_with_path(is_hidden_matrix, params)


def optimizer_labels(params) -> object:
    """Which transformation updates each leaf with `optimizer="muon"`: "muon" where `muon_mask` holds, else "adamw"."""
    return jax.tree.map(lambda hidden: "muon" if hidden else "adamw", muon_mask(params))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """torch.optim.AdamW semantics (decoupled decay, eps outside the sqrt, bias correction); with
    `optimizer="muon"`, `optax.contrib.muon`'s update (Nesterov momentum, `muon_ns_steps` Newton–Schulz steps,
    updates scaled by sqrt(max(1, fan_out / fan_in)); computed by shape, jaxgpt/core/muon.py) for the `muon_mask`
    matrices instead. Clipping sees every gradient."""
    tx = optax.adamw(
        learning_rate=learning_rate_schedule(config),
        b1=config.beta1,
        b2=config.beta2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=None if config.decay_all_params else functools.partial(decay_mask, embeddings=config.decay_embeddings),
    )
    if config.optimizer == "muon":
        muon = stacked_muon.muon(learning_rate_schedule(config, config.muon_lr), beta=config.muon_momentum,
                                 ns_steps=config.muon_ns_steps, weight_decay=config.muon_weight_decay)
        tx = optax.partition({"muon": muon, "adamw": tx}, optimizer_labels)
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
    return tx
