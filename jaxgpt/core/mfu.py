"""Model FLOPs utilization: FLOPs per token (PaLM appendix B, as nanoGPT's `estimate_mfu`) over device peak."""

from __future__ import annotations

import jax

from jaxgpt.core.config import GPTConfig

# Dense peak FLOP/s per device, from the vendors' data sheets: (device_kind contains, bfloat16, float32).
# "float32" is what XLA runs float32 matmuls at by default: TF32 tensor cores on A100/H100/H200,
# one bfloat16 pass on TPUs. First match wins, so specific names come before general ones.
PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("h100 pcie", 756e12, 378e12),
    ("h100", 989e12, 494.5e12),  # SXM
    ("h200", 989e12, 494.5e12),
    ("a100", 312e12, 156e12),
    ("tpu v4", 275e12, 275e12),
    ("tpu v5 lite", 197e12, 197e12),  # v5e
    ("tpu v5e", 197e12, 197e12),
    ("tpu v5p", 459e12, 459e12),
    ("tpu v5", 459e12, 459e12),  # v5p reports "TPU v5"
    ("tpu v6 lite", 918e12, 918e12),  # v6e (Trillium)
    ("tpu v6e", 918e12, 918e12),
)


def matmul_params(config: GPTConfig, n_params: int) -> int:
    """Parameters that take part in a matmul: all but the position table (none with RoPE), and the token table
    unless tied."""
    embeddings = config.block_size * config.n_embd if config.position == "learned" else 0
    if not config.tie_embeddings:
        embeddings += config.vocab_size * config.n_embd
    return n_params - embeddings


def flops_per_token(config: GPTConfig, n_params: int, seq_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) per token: 6 N + 12 L C T (PaLM, nanoGPT's estimate_mfu).

    N = matmul parameters; the second term is the attention scores and weighted sum at context T (default
    block_size), counted in full as PaLM does (the causal mask's zeros included).
    """
    T = seq_len or config.block_size
    return 6 * matmul_params(config, n_params) + 12 * config.n_layer * config.n_embd * T


def device_peak_flops(device: jax.Device, dtype: str) -> float | None:
    """Dense peak FLOP/s of `device` for matmuls in `dtype` ("float32" or "bfloat16"); None if unknown."""
    kind = device.device_kind.lower()
    for name, bf16, f32 in PEAK_FLOPS:
        if name in kind:
            return bf16 if dtype == "bfloat16" else f32
    return None


def mfu(tokens_per_sec: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    """Fraction of the peak FLOP/s achieved; None when the peak is unknown."""
    return None if not peak_flops else tokens_per_sec * flops_per_token / peak_flops


def step_activation_bytes(model: GPTConfig, batch_size: int) -> float:
    """About how many bytes of float32 activations one train step of `model` on `batch_size` sequences keeps for
    its backward pass: per layer and token 68 C + 10 n_head T bytes (Korthikanti et al. 2022's 34 C + 5 n_head T
    for 16-bit values, doubled). XLA's own plans: `lecture` 4.5 GB (this: 4.1 GB), nanoGPT's CPU recipe 50 MB
    (this: 35 MB)."""
    per_token_layer = 68 * model.n_embd + 10 * model.n_head * model.block_size
    return float(per_token_layer) * batch_size * model.block_size * model.n_layer
