from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parity import EXAMPLES, PARITY, PERTURBED_DRAWS, SPREAD_FACTOR, float32_jitter
from torch_models import random_params, torch_model

from jaxgpt.core.config import GPTConfig, TrainConfig, resume_changes
from jaxgpt.core.model import GPT, init_params
from jaxgpt.core.optim import decay_mask, learning_rate_schedule, make_optimizer, muon_mask
from jaxgpt.system.errors import UsageError
from jaxgpt.torch_reference import modern
from jaxgpt.torch_reference import muon as muon_ref

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


def test_decay_mask_with_embeddings_is_nanogpts_groups():
    """nanoGPT decays every tensor of 2 or more dimensions: the matrices and the embedding tables."""
    config = GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8)
    params = GPT(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    mask = decay_mask(params, embeddings=True)
    assert jax.tree.leaves(mask) == [leaf.ndim >= 2 for leaf in jax.tree.leaves(params)]
    assert mask["token_embedding_table"]["embedding"] and mask["position_embedding_table"]["embedding"]


def test_decay_embeddings_needs_decay_all_params_false():
    with pytest.raises(UsageError, match="decay_all_params=false"):
        dataclasses.replace(BASE, decay_embeddings=True)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_nanogpt_warmup_is_its_get_lr(schedule):
    """warmup="nanogpt": step i < warmup_iters at lr * (i + 1) / (warmup_iters + 1), then what from_zero gives."""
    config = dataclasses.replace(BASE, lr_schedule=schedule, warmup_iters=10, min_lr=1e-4, max_iters=100,
                                 warmup="nanogpt")
    sched, from_zero = learning_rate_schedule(config), learning_rate_schedule(dataclasses.replace(config,
                                                                                                 warmup="from_zero"))
    for i in range(10):
        assert float(sched(i)) == pytest.approx(1e-3 * (i + 1) / 11, rel=1e-6)
    assert float(from_zero(0)) == 0.0
    for i in (10, 11, 55, 99, 100):
        assert float(sched(i)) == pytest.approx(float(from_zero(i)), rel=1e-6)


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

# ---------------------------------------------------------------------------------------------------------------
# Muon (--optimizer=muon) against jaxgpt/torch_reference/muon.py with torch.optim.AdamW for the rest

MUON_STEPS = 5


@dataclasses.dataclass(frozen=True)
class MuonCase:
    """A model, the optimizer settings and the seed of its params and MUON_STEPS gradients (N(0, grad_scale^2))."""

    model: GPTConfig
    train: TrainConfig
    grad_scale: float
    seed: int


@st.composite
def muon_cases(draw) -> MuonCase:
    model = GPTConfig(vocab_size=draw(st.integers(2, 40)), block_size=draw(st.integers(1, 16)),
                      n_layer=draw(st.integers(1, 3)), n_head=(n_head := draw(st.integers(1, 3))),
                      n_embd=n_head * draw(st.integers(1, 8)), dropout=0.0, tie_embeddings=draw(st.booleans()),
                      bias=draw(st.booleans()), norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
                      qk_norm=draw(st.booleans()))
    schedule = draw(st.sampled_from(["constant", "cosine"]))
    train = TrainConfig(optimizer="muon", max_iters=MUON_STEPS, lr_schedule=schedule,
                        warmup_iters=draw(st.sampled_from([0, 2])), min_lr=1e-4 if schedule == "cosine" else 0.0,
                        learning_rate=draw(st.sampled_from([1e-3, 3e-3])), muon_lr=draw(st.sampled_from([0.02, 0.05])),
                        muon_momentum=draw(st.sampled_from([0.0, 0.9, 0.95])),
                        muon_ns_steps=draw(st.sampled_from([3, 5])),
                        muon_weight_decay=draw(st.sampled_from([0.0, 0.1])),
                        weight_decay=draw(st.sampled_from([0.0, 0.1])), decay_all_params=draw(st.booleans()),
                        grad_clip=draw(st.sampled_from([0.0, 1.0])))
    return MuonCase(model, train, grad_scale=draw(st.sampled_from([1e-3, 1.0, 30.0])),
                    seed=draw(st.integers(0, 2**32 - 1)))


def scheduled_lr(config: TrainConfig, step: int) -> float:
    """AdamW's learning rate at `step` (0-based): linear warmup from 0, then constant or cosine to min_lr."""
    lr, warmup = config.learning_rate, config.warmup_iters
    if step < warmup:
        return lr * step / warmup
    if config.lr_schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup) / (max(config.max_iters, warmup + 1) - warmup))
    return config.min_lr + (lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def torch_muon_run(case: MuonCase, params, grads: list, perturb: int | None = None) -> list[dict[str, np.ndarray]]:
    """The params (PyTorch names) after each step of the reference in float64: clipping by the global norm of all
    gradients, Muon on the blocks' matrices (`hidden_matrices`) at the schedule scaled to muon_lr, and
    torch.optim.AdamW on everything else with weight decay on matrices other than embeddings unless
    decay_all_params. With a `perturb` seed, the params and every step's gradients are first multiplied by
    (1 + u * e), u float32's unit roundoff, e uniform in [-1, 1] (test_parity's `perturbed_torch`)."""
    config, tied, dtype = case.train, case.model.tie_embeddings, torch.float64
    generator = None if perturb is None else torch.Generator().manual_seed(perturb)

    def jitter(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if generator is None else float32_jitter(tensor, generator)

    model = torch_model(case.model, "modern").to(dtype)
    model.load_state_dict({k: jitter(v.to(dtype)) for k, v in modern.jaxgpt_state_dict(params, tied).items()},
                          strict=True)
    named = dict(model.named_parameters())  # a tied lm_head.weight once, as the token embedding
    hidden = muon_ref.hidden_matrices(model)
    rest = [name for name in named if name not in hidden]
    decayed = [n for n in rest if config.decay_all_params or (named[n].ndim >= 2 and "embedding" not in n)]
    adamw = torch.optim.AdamW(
        [{"params": [named[n] for n in decayed], "weight_decay": config.weight_decay},
         {"params": [named[n] for n in rest if n not in decayed], "weight_decay": 0.0}],
        lr=config.learning_rate, betas=(config.beta1, config.beta2), eps=config.eps)
    muon = muon_ref.Muon([named[n] for n in hidden], momentum=config.muon_momentum,
                         weight_decay=config.muon_weight_decay, ns_steps=config.muon_ns_steps)
    after = []
    for step, step_grads in enumerate(grads):
        torch_grads = modern.jaxgpt_state_dict(step_grads, tied)
        for name, p in named.items():
            p.grad = jitter(torch_grads[name].to(dtype))
        norm = torch.sqrt(sum((p.grad**2).sum() for p in named.values()))
        if config.grad_clip and norm > config.grad_clip:
            for p in named.values():
                p.grad *= config.grad_clip / norm
        lr = scheduled_lr(config, step)
        for group in adamw.param_groups:
            group["lr"] = lr
        muon.param_groups[0]["lr"] = lr * config.muon_lr / config.learning_rate
        adamw.step()
        muon.step()
        after.append({name: p.detach().double().numpy().copy() for name, p in named.items()})
    return after


# Each step's params are compared with PyTorch's float64 run, element by element: within MUON_RTOL of the largest
# parameter change so far, plus one float32 spacing of the parameter per step taken (the params are float32: a
# norm scale near 1 moves in steps of 6e-8). Beyond the spacing, jaxgpt's float32 was at most 2.4e-6 of the change
# off (40 examples), a margin of 4. Where float32 cannot be that accurate (Newton-Schulz amplifies the rounding of
# an ill-conditioned momentum: the quintic's slope at 0 is 3.4), within SPREAD_FACTOR times the spread of float64
# runs from float32-sized perturbations of the params and gradients (as test_parity's bound; measured on AVX2 over
# 25 examples, 2026-12-03: jaxgpt at most 0.17 of the first term, and at most 3.4 spreads).
MUON_RTOL = 1e-5


@settings(PARITY, max_examples=max(5, EXAMPLES))
@given(case=muon_cases())
def test_muon_steps_match_the_pytorch_reference(case):
    """MUON_STEPS updates of make_optimizer(optimizer="muon") from random params and gradients equal the reference's
    (jaxgpt/torch_reference/muon.py on the blocks' matrices, torch.optim.AdamW on the rest) after every step."""
    rng = np.random.default_rng(case.seed)
    params = random_params(case.model, rng, 0.1)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(0.0, case.grad_scale, p.shape), jnp.float32), params)
             for _ in range(MUON_STEPS)]
    tx = make_optimizer(case.train)

    @jax.jit
    def apply(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    p, opt_state, jax_after = params, tx.init(params), []
    for g in grads:
        p, opt_state = apply(p, opt_state, g)
        jax_after.append({k: v.double().numpy() for k, v in modern.jaxgpt_state_dict(p, False).items()})
    t64 = torch_muon_run(case, params, grads)
    perturbed = [torch_muon_run(case, params, grads, perturb=seed) for seed in range(PERTURBED_DRAWS)]
    start = {k: v.double().numpy() for k, v in modern.jaxgpt_state_dict(params, False).items()}
    for step in range(MUON_STEPS):
        moved = max(np.abs(t64[step][name] - start[name]).max() for name in t64[step])
        for name, exact in t64[step].items():
            jax_error = np.abs(jax_after[step][name] - exact)
            spacing = (step + 1) * np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
            spread = max(np.abs(run[step][name] - exact).max() for run in perturbed)
            tolerance = max(MUON_RTOL * moved, SPREAD_FACTOR * spread) + spacing
            assert np.all(jax_error <= tolerance), (f"step {step + 1}, {name}: jaxgpt is {jax_error.max():.3g} from "
                                                    f"PyTorch float64, more than the tolerance")
