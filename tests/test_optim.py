from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.config import TrainConfig
from jaxgpt.model import GPT, GPTConfig
from jaxgpt.optim import decay_mask, learning_rate_schedule, make_optimizer

BASE = TrainConfig(max_iters=100, learning_rate=1e-3)


def test_constant_and_warmup_schedules():
    assert float(learning_rate_schedule(BASE)(50)) == pytest.approx(1e-3)
    warm = learning_rate_schedule(dataclasses.replace(BASE, warmup_iters=10))
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(5e-4) and float(warm(50)) == pytest.approx(1e-3)


def test_cosine_schedule_ends_at_min_lr():
    sched = learning_rate_schedule(dataclasses.replace(BASE, lr_schedule="cosine", warmup_iters=10, min_lr=1e-4))
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(55)) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-4)
    assert float(sched(100)) == pytest.approx(1e-4)


def test_decay_mask_spares_biases_norms_embeddings():
    config = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8)
    params = GPT(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    mask = decay_mask(params)
    assert mask["blocks_0"]["sa"]["query"]["kernel"] and mask["lm_head"]["kernel"]
    assert not mask["lm_head"]["bias"] and not mask["ln_f"]["scale"]
    assert not mask["token_embedding_table"]["embedding"]


def test_weight_decay_is_torch_default_decoupled():
    """One AdamW step from zero gradients only decays: p <- p * (1 - lr * wd), as torch.optim.AdamW."""
    params = {"w": jnp.full((2, 2), 2.0)}
    tx = make_optimizer(BASE)
    updates, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
    np.testing.assert_allclose(params["w"] + updates["w"], 2.0 * (1 - 1e-3 * 0.01), rtol=1e-7)


def test_grad_clip_rescales_the_gradient_adam_sees():
    params = {"w": jnp.zeros(3)}
    tx = make_optimizer(dataclasses.replace(BASE, grad_clip=1.0))
    _, state = tx.update({"w": jnp.array([300.0, 400.0, 0.0])}, tx.init(params), params)
    first_moment = jax.tree_util.tree_leaves(state, is_leaf=lambda s: hasattr(s, "mu"))
    mu = next(s.mu for s in first_moment if hasattr(s, "mu"))["w"]
    np.testing.assert_allclose(mu, (1 - 0.9) * np.array([0.6, 0.8, 0.0]), rtol=1e-6)  # norm clipped to 1
