"""The optimizer: AdamW with PyTorch's defaults, an optional warmup + cosine schedule, clipping, decay mask."""

from __future__ import annotations

import jax
import optax

from jaxgpt.config import TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Constant, or cosine decay to `min_lr` over `max_iters`; either after `warmup_iters` of linear warmup."""
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=config.learning_rate,
            warmup_steps=config.warmup_iters,
            decay_steps=max(config.max_iters, config.warmup_iters + 1),
            end_value=config.min_lr,
        )
    if config.warmup_iters:
        warmup = optax.linear_schedule(0.0, config.learning_rate, config.warmup_iters)
        return optax.join_schedules([warmup, optax.constant_schedule(config.learning_rate)], [config.warmup_iters])
    return optax.constant_schedule(config.learning_rate)


def decay_mask(params) -> object:
    """True for matrices (Dense kernels); False for biases, LayerNorm scales and embedding tables."""

    def is_decayed(path, leaf) -> bool:
        names = [getattr(k, "key", "") for k in path]
        return leaf.ndim >= 2 and "embedding" not in names

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """torch.optim.AdamW semantics (decoupled decay, eps outside the sqrt, bias correction)."""
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(config),
        b1=config.beta1,
        b2=config.beta2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=None if config.decay_all_params else decay_mask,
    )
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw
