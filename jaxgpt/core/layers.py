"""Building blocks that XLA's CPU backend runs much faster than their Flax defaults, same results.

- `cpu_dense_dot_general`, for `nn.Dense(dot_general=...)`: the layer as one 2-D matmul whose backward pass
  computes the weight gradient x^T @ dy from a materialized x^T. XLA:CPU otherwise contracts over the
  leading axes of x and dy, which ran a Dense layer's forward + backward 1.3x (lecture sizes) to 2x
  (`small` sizes) slower on our 2-core AMD EPYC (benchmarks/RESULTS.md, "Profile"). The model uses it where
  its config says `dense_kernel="cpu"`, which "auto" resolves to on the CPU backend when the model is built.
- `Dropout`: nn.Dropout with its mask from Threefry-2x32 rounds written out, so they fuse with the mask's
  comparison and multiply into one loop. jax.random lowers Threefry on CPU as a 5-iteration loop (to
  compile faster) that XLA cannot fuse: the lecture model's masks took as long as its whole forward pass
  without dropout; this is about 8x faster. GPU and TPU fuse either way. Same key -> same mask everywhere.
- `gelu`: the exact GELU through erf, as PyTorch's CPU kernel computes it. `jax.nn.gelu(approximate=False)`
  goes through erfc, which XLA:CPU evaluates about 2.5x slower than erf (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2))), the formula of torch.nn.GELU()'s CPU kernel.
    In float32 over [-12, 12] it is within 1.04e-6 of the float64 value (PyTorch: 1.10e-6)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


@jax.custom_vjp
def _matmul_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
    return x @ w


def _matmul_cpu_fwd(x: jax.Array, w: jax.Array):
    return x @ w, (x, w)


def _matmul_cpu_bwd(residuals, dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = residuals  # (M, K), (K, N); dy (M, N)
    x_t = jax.lax.optimization_barrier(x.T)  # (K, M), materialized: a plain row-major GEMM follows
    return dy @ w.T, x_t @ dy


_matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


def cpu_dense_dot_general(x: jax.Array, kernel: jax.Array, dimension_numbers, precision=None,
                          preferred_element_type=None) -> jax.Array:
    """x (..., K) @ kernel (K, N) -> (..., N), for nn.Dense's `dot_general`, with the backward pass above."""
    (contract_x, contract_kernel), batch = dimension_numbers
    if tuple(contract_x) != (x.ndim - 1,) or tuple(contract_kernel) != (0,) or any(batch):
        raise ValueError(f"cpu_dense_dot_general only contracts x's last axis with the kernel's first, got "
                         f"{dimension_numbers}")
    x2d = x.reshape(-1, x.shape[-1])  # (M, K)
    if precision is None and preferred_element_type is None:
        y = _matmul_cpu(x2d, kernel)
    else:
        y = jax.lax.dot(x2d, kernel, precision=precision, preferred_element_type=preferred_element_type)
    return y.reshape(*x.shape[:-1], kernel.shape[1])


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), as jax.extend.random.threefry_2x32; all uint32."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))) ^ x1
        x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def random_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 bits of `shape`: the Threefry hash of each element's index under a key drawn from `key`."""
    size = int(np.prod(shape))
    if size >= 2**32:
        raise ValueError(f"random_bits: {size} elements exceed the 2**32 counter space")
    k1, k2 = jax.random.bits(key, (2,), jnp.uint32)
    index = jax.lax.iota(jnp.uint32, size).reshape(shape)
    return threefry2x32(k1, k2, index, jnp.zeros_like(index))[0]


class Dropout(nn.Module):
    """Inverted dropout like nn.Dropout (zero with probability `rate`, scale the rest by 1 / (1 - rate))."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        threshold = np.uint32(round(self.rate * 2**32))  # P(bits < threshold) = rate, to 2**-32
        keep = random_bits(self.make_rng("dropout"), x.shape) >= threshold
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))
