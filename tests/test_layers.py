"""The CPU-friendly Dense matmul and Dropout compute what their Flax defaults compute."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from jaxgpt.core.layers import Dropout, cpu_dense_dot_general, gelu, random_bits, threefry2x32


def test_threefry_rounds_are_jax_threefry():
    key = jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32)
    count = jnp.arange(20, dtype=jnp.uint32)  # jax hashes the halves as (x1, x2) pairs
    x1, x2 = threefry2x32(key[0], key[1], count[:10], count[10:])
    np.testing.assert_array_equal(jnp.concatenate([x1, x2]), threefry_2x32(key, count))


def test_random_bits_are_uniform_and_keyed():
    bits = np.asarray(random_bits(jax.random.key(0), (64, 1024)))
    assert bits.dtype == np.uint32
    # each of the 32 bit positions is set about half the time (65,536 draws: sd 0.002)
    ones = np.unpackbits(bits.view(np.uint8)).reshape(-1, 32).mean(axis=0)
    assert np.all(np.abs(ones - 0.5) < 0.01)
    assert abs(np.corrcoef(bits[:, :-1].ravel() >> 16, bits[:, 1:].ravel() >> 16)[0, 1]) < 0.02  # neighbours
    np.testing.assert_array_equal(bits, random_bits(jax.random.key(0), (64, 1024)))
    assert np.mean(bits == np.asarray(random_bits(jax.random.key(1), (64, 1024)))) < 0.001


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_drops_at_rate_and_rescales(rate):
    x = jnp.ones((256, 256))
    y = np.asarray(Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01  # 65,536 draws: sd < 0.002
    np.testing.assert_allclose(y[kept], 1 / (1 - rate), rtol=1e-6)
    np.testing.assert_array_equal(Dropout(rate).apply({}, x, deterministic=True), x)
    assert Dropout(0.0).apply({}, x, deterministic=False) is x


def test_dense_matmul_equals_flax_default_and_its_gradients():
    x = jax.random.normal(jax.random.key(0), (4, 8, 16))  # (B, T, C)
    ours, flax_default = nn.Dense(24, dot_general=cpu_dense_dot_general), nn.Dense(24)
    params = flax_default.init(jax.random.key(1), x)
    for a, b in zip(jax.tree_util.tree_leaves(ours.init(jax.random.key(1), x)), jax.tree_util.tree_leaves(params),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # same parameters, same initialisation

    def loss(module, p, x):
        return jnp.sum(jnp.tanh(module.apply(p, x)) ** 2)

    np.testing.assert_allclose(ours.apply(params, x), flax_default.apply(params, x), rtol=1e-6, atol=1e-6)
    grads_ours = jax.jit(jax.grad(lambda p, x: loss(ours, p, x), argnums=(0, 1)))(params, x)
    grads_flax = jax.jit(jax.grad(lambda p, x: loss(flax_default, p, x), argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(grads_ours), jax.tree_util.tree_leaves(grads_flax), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dense_matmul_rejects_other_contractions():
    with pytest.raises(ValueError, match="only contracts x's last axis"):
        cpu_dense_dot_general(jnp.ones((3, 4)), jnp.ones((3, 5)), (((0,), (0,)), ((), ())))


def test_gelu_is_exact_gelu_and_pytorchs():
    from scipy.special import erfc
    torch = pytest.importorskip("torch")

    x = np.linspace(-12, 12, 24_001, dtype=np.float32)
    exact = 0.5 * x.astype(np.float64) * erfc(-x.astype(np.float64) / np.sqrt(2))
    ours = np.asarray(gelu(jnp.asarray(x)), np.float64)
    spacing = np.spacing(np.maximum(np.abs(x), 1.0))  # float32 rounding at each input's size
    assert np.all(np.abs(ours - exact) <= 4 * spacing)  # at most 2.3 spacings measured (x near 3.95)
    x_torch = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.gelu(x_torch).sum().backward()
    np.testing.assert_allclose(ours, torch.nn.functional.gelu(x_torch).detach().numpy(), rtol=0, atol=2e-6)
    grad = jax.grad(lambda v: gelu(v).sum())(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(grad), x_torch.grad.numpy(), rtol=0, atol=1e-6)
