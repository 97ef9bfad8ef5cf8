from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxgpt.config import TrainConfig, resume_changes
from jaxgpt.errors import UsageError
from jaxgpt.model import GPT, GPTConfig, init_params
from jaxgpt.optim import decay_mask, learning_rate_schedule, make_optimizer, muon_mask

BASE = TrainConfig(max_iters=100, learning_rate=1e-3)


def param_shapes_tree(config: GPTConfig):
    """The model's parameter tree as shapes and dtypes (jax.ShapeDtypeStruct), without initialising it."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


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



@pytest.mark.parametrize("tied", [False, True])
def test_muon_takes_the_blocks_matrices_only(tied):
    config = GPTConfig(vocab_size=5, block_size=4, n_layer=2, n_head=2, n_embd=8, tie_embeddings=tied,
                       qk_norm=True)
    flat = traverse_util.flatten_dict(muon_mask(param_shapes_tree(config)), sep="/")
    hidden = {f"blocks_{i}/{name}/kernel" for i in range(2) for name in
              ("sa/query", "sa/key", "sa/value", "sa/proj", "ffwd/fc", "ffwd/proj")}
    assert {path for path, muon in flat.items() if muon} == hidden
    assert ("lm_head/kernel" in flat) is not tied  # 2-D, but AdamW's; so are the embedding tables
    bigram = GPTConfig(vocab_size=5, model_type="bigram")
    assert not any(jax.tree.leaves(muon_mask(param_shapes_tree(bigram))))


def test_muon_is_off_by_default_and_its_state_differs():
    config = TrainConfig(model=GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8))
    params = param_shapes_tree(config.model)
    adamw, muon = (jax.eval_shape(make_optimizer(c).init, params)
                   for c in (config, dataclasses.replace(config, optimizer="muon")))
    assert config.optimizer == "adamw"
    assert jax.tree.structure(adamw) == jax.tree.structure(
        jax.eval_shape(optax.adamw(optax.constant_schedule(1e-3)).init, params))
    assert jax.tree.structure(adamw) != jax.tree.structure(muon)


def test_resume_refuses_switching_the_optimizer_but_takes_a_new_muon_lr():
    adamw = TrainConfig()
    muon = dataclasses.replace(adamw, optimizer="muon")
    for saved, current in ((adamw, muon), (muon, adamw)):
        with pytest.raises(UsageError, match=rf"^cannot resume from ckpt: the config differs in optimizer \(checkpoint "
                                             rf"'{saved.optimizer}', now '{current.optimizer}'\); use the checkpoint"):
            resume_changes(saved, current, "ckpt")
    faster = dataclasses.replace(muon, muon_lr=0.05, muon_momentum=0.9)
    assert resume_changes(muon, faster, "ckpt") == ["muon_lr 0.02 -> 0.05", "muon_momentum 0.95 -> 0.9"]
    assert resume_changes(adamw, dataclasses.replace(adamw, muon_lr=0.05), "ckpt") == []  # unused by AdamW


def test_muon_schedule_is_adamws_scaled_to_muon_lr():
    config = dataclasses.replace(BASE, lr_schedule="cosine", warmup_iters=10, min_lr=1e-4, muon_lr=0.02)
    adamw, muon = learning_rate_schedule(config), learning_rate_schedule(config, config.muon_lr)
    for step in (0, 5, 10, 55, 100):
        assert float(muon(step)) == pytest.approx(20 * float(adamw(step)), rel=1e-6)
