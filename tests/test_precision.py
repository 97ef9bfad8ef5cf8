"""The speed paths compute what the exact path computes: bfloat16 compute, dot_product attention, scanned steps."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt.core.config import GPTConfig, TrainConfig, load_config
from jaxgpt.core.losses import cross_entropy
from jaxgpt.core.model import GPT, build_model, init_params
from jaxgpt.core.optim import make_optimizer
from jaxgpt.run.step import TrainState, make_train_step, resolved_steps_per_call
from jaxgpt.run.training import train
from jaxgpt.system import sharding
from jaxgpt.system.errors import UsageError

CONFIG = GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1, dtype="float32")


def init(config: GPTConfig):
    return init_params(config, jax.random.key(0))


def batch(config: GPTConfig, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    tokens = jax.random.randint(jax.random.key(seed), (4, config.block_size + 1), 0, config.vocab_size)
    return tokens[:, :-1], tokens[:, 1:]


def loss_and_grads(config: GPTConfig, params, deterministic: bool = True):
    x, y = batch(config)

    def loss_fn(p):
        logits = GPT(config).apply({"params": p}, x, deterministic=deterministic, rngs={"dropout": jax.random.key(3)})
        return cross_entropy(logits, y)

    return jax.jit(jax.value_and_grad(loss_fn))(params)


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_accelerators():
    assert GPTConfig().resolved("cpu").dtype == "float32"
    assert GPTConfig().resolved("gpu").dtype == GPTConfig().resolved("tpu").dtype == "bfloat16"
    assert GPTConfig(dtype="bfloat16").resolved("cpu").dtype == "bfloat16"
    assert GPTConfig(dtype="float32").resolved("gpu").dtype == "float32"
    assert GPTConfig().resolved("cpu").dense_kernel == "cpu" and GPTConfig().resolved("gpu").dense_kernel == "xla"


def test_auto_query_block_is_64_on_cpu_from_block_size_256_and_one_block_elsewhere():
    assert GPTConfig(block_size=256).resolved("cpu").query_block == 64
    assert GPTConfig(block_size=300).resolved("cpu").query_block == 64
    assert GPTConfig(block_size=128).resolved("cpu").query_block == 128  # one block
    assert GPTConfig(block_size=255).resolved("cpu").query_block == 255
    assert GPTConfig(block_size=256).resolved("gpu").query_block == GPTConfig().resolved("tpu").query_block == 256
    assert GPTConfig(block_size=256, query_block=32).resolved("gpu").query_block == 32


def test_bfloat16_compute_keeps_float32_params_and_is_close_to_float32():
    params = init(CONFIG)
    bf16 = dataclasses.replace(CONFIG, dtype="bfloat16")
    bf16_params = jax.eval_shape(lambda: init(bf16))
    assert {p.dtype for p in jax.tree_util.tree_leaves(bf16_params)} == {jnp.dtype("float32")}
    x, _ = batch(CONFIG)
    assert jax.eval_shape(lambda: GPT(bf16).apply({"params": params}, x)).dtype == jnp.bfloat16
    loss32, grads32 = loss_and_grads(CONFIG, params)
    loss16, grads16 = loss_and_grads(bf16, params)
    assert loss16.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (relative error ~0.4% per rounding): the loss (~2.4) agrees to 1e-2
    # and the gradient direction to within a few degrees.
    assert abs(float(loss16) - float(loss32)) < 1e-2
    g32, g16 = (jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(t)]) for t in (grads32, grads16))
    assert g16.dtype == jnp.float32
    assert float(jnp.dot(g32, g16) / (jnp.linalg.norm(g32) * jnp.linalg.norm(g16))) > 0.99


def test_dot_product_attention_equals_the_exact_path_in_float32():
    params = init(CONFIG)
    fused = dataclasses.replace(CONFIG, attention="dot_product")
    x, _ = batch(CONFIG)
    np.testing.assert_allclose(GPT(fused).apply({"params": params}, x), GPT(CONFIG).apply({"params": params}, x),
                               rtol=1e-5, atol=1e-5)
    no_dropout = dataclasses.replace(CONFIG, dropout=0.0)  # dot_product has no attention-weight dropout
    loss_a, grads_a = loss_and_grads(no_dropout, params, deterministic=False)
    loss_b, grads_b = loss_and_grads(dataclasses.replace(no_dropout, attention="dot_product"), params,
                                     deterministic=False)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attention", ["xla", "dot_product"])
def test_both_attention_paths_are_causal(attention):
    config = dataclasses.replace(CONFIG, attention=attention)
    params = init(config)
    x, _ = batch(config)
    changed = x.at[:, 5].set((x[:, 5] + 1) % config.vocab_size)
    a, b = GPT(config).apply({"params": params}, x), GPT(config).apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5], b[:, 5])


def test_several_steps_per_call_give_the_same_params_as_one():
    base = dataclasses.replace(load_config("tiny"), model=dataclasses.replace(load_config("tiny").model,
                                                                              vocab_size=11, dtype="float32"))
    data = jax.random.randint(jax.random.key(0), (2000,), 0, 11)
    finals = []
    for k in (1, 4):
        config = dataclasses.replace(base, steps_per_call=k)  # tiny has dropout 0.1: keys matter
        model, tx = build_model(config.model), make_optimizer(config)
        state = TrainState.fresh(init_params(config.model, jax.random.key(config.seed)), tx)
        placement = sharding.Placement.for_state(sharding.make_mesh(1, jax.devices()[:1]), state)
        state = jax.device_put(state, placement.state)  # as its outputs are placed: the step compiles once
        step = make_train_step(config, model, tx, placement)
        for _ in range(8 // k):
            state, loss = step(state, data)
        finals.append((state, loss))
    (one, loss_one), (four, loss_four) = finals
    assert int(one.step) == int(four.step) == 8
    assert float(loss_one) == float(loss_four)
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(four), strict=True):
        np.testing.assert_array_equal(a, b)


def test_training_in_scanned_steps_reports_tokens_per_sec_and_mfu(tmp_path, small_text_file):
    config = dataclasses.replace(load_config("tiny"), data_path=str(small_text_file), out_dir=str(tmp_path / "r"),
                                 progress=False, sample_chars=0, max_iters=30, eval_interval=15, steps_per_call=10,
                                 peak_flops=1e9)
    lines: list[str] = []
    result = train(config, log=lines.append)
    assert int(result.state.step) == 30
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 15, 30]
    assert records[0]["mfu"] is None and records[0]["tokens_per_sec"] is None
    V, C, T, L = result.dataset.tokenizer.vocab_size, 32, 16, 2  # tiny
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(result.state.params))
    flops_per_token = 6 * (n_params - V * C - T * C) + 12 * L * C * T
    assert records[1]["mfu"] == pytest.approx(records[1]["tokens_per_sec"] * flops_per_token / 1e9)
    assert lines[2] == f"step 15: train loss {records[1]['train_loss']:.4f}, val loss {records[1]['val_loss']:.4f}"
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["model"]["dtype"] == "float32"  # "auto" resolved for this backend


@pytest.mark.parametrize(("requested", "eval_interval", "max_iters", "used"),
                         [(10, 100, 5000, 10), (10, 25, 5000, 5), (10, 12, 24, 6), (7, 100, 5000, 5), (1, 9, 9, 1)])
def test_steps_per_call_is_the_largest_that_lands_on_every_evaluation(requested, eval_interval, max_iters, used):
    config = dataclasses.replace(load_config("tiny"), steps_per_call=requested, eval_interval=eval_interval,
                                 max_iters=max_iters, checkpoint_interval=max_iters)
    assert resolved_steps_per_call(config, flops_per_step=1e12) == used


def test_steps_per_call_also_lands_on_checkpoints_and_the_resumed_step():
    config = dataclasses.replace(load_config("tiny"), steps_per_call=10, eval_interval=100, max_iters=5000,
                                 checkpoint_interval=250)
    assert resolved_steps_per_call(config, flops_per_step=1e12) == 10
    assert resolved_steps_per_call(config, 1e12, start_step=1234) == 2  # resumed after an interrupt at step 1234


@pytest.mark.parametrize(("flops_per_step", "used"), [(0, 10), (1e6, 10), (2e9, 10), (4e9, 5), (1.5e10, 1), (1e13, 1)])
def test_steps_per_call_zero_chooses_from_the_work_per_step(flops_per_step, used):
    config = dataclasses.replace(load_config("tiny"), steps_per_call=0, eval_interval=100, max_iters=5000,
                                 checkpoint_interval=500)
    assert resolved_steps_per_call(config, flops_per_step) == used
    assert config.steps_per_call == TrainConfig().steps_per_call  # the default is the automatic choice


def test_bfloat16_training_runs(tmp_path, small_text_file):
    config = dataclasses.replace(load_config("tiny"), data_path=str(small_text_file), out_dir=str(tmp_path / "r"),
                                 progress=False, sample_chars=0, max_iters=30, eval_interval=30)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="bfloat16"))
    result = train(config, log=lambda _: None)
    assert {p.dtype for p in jax.tree_util.tree_leaves(result.state.params)} == {jnp.dtype("float32")}
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"] - 0.3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps_per_call": -1}, "steps_per_call must not be negative"),
        ({"peak_flops": 0.0}, "peak_flops must be positive"),
    ],
)
def test_bad_speed_settings(overrides, message):
    with pytest.raises(UsageError, match=message):
        dataclasses.replace(load_config("tiny"), **overrides)


def test_bad_dtype_and_attention():
    with pytest.raises(UsageError, match="dtype must be one of auto, float32, bfloat16"):
        GPTConfig(dtype="float16")
    with pytest.raises(UsageError, match="attention must be one of xla, dot_product, cudnn, splash, got 'flash'"):
        GPTConfig(attention="flash")
