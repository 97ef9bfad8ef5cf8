"""FLOPs per token and MFU against hand computations."""

from __future__ import annotations

import types

import pytest

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.mfu import device_peak_flops, flops_per_token, matmul_params, mfu


def test_lecture_flops_per_token_by_hand():
    lecture = GPTConfig()  # 10,788,929 parameters; tables: 65 x 384 tokens, 256 x 384 positions
    n = 10_788_929 - 65 * 384 - 256 * 384
    assert matmul_params(lecture, 10_788_929) == n == 10_665_665
    assert flops_per_token(lecture, 10_788_929) == 6 * 10_665_665 + 12 * 6 * 384 * 256 == 71_071_878


def test_tied_embeddings_count_the_table_as_the_output_matmul():
    config = GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=1, n_embd=4, tie_embeddings=True)
    assert matmul_params(config, 1000) == 1000 - 8 * 4
    assert flops_per_token(config, 1000, seq_len=4) == 6 * 968 + 12 * 1 * 4 * 4


def test_rope_flops_count_no_position_table():
    rope = GPTConfig(position="rope")  # no 256 x 384 table: every parameter but the token table is in a matmul
    n_params = 10_788_929 - 256 * 384
    assert matmul_params(rope, n_params) == n_params - 65 * 384 == 10_665_665
    assert flops_per_token(rope, n_params) == flops_per_token(GPTConfig(), 10_788_929)


def test_mfu_is_achieved_over_peak():
    assert mfu(tokens_per_sec=1000.0, flops_per_token=2e6, peak_flops=4e9) == pytest.approx(0.5)
    assert mfu(tokens_per_sec=1000.0, flops_per_token=2e6, peak_flops=None) is None


@pytest.mark.parametrize(
    ("kind", "dtype", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
        ("NVIDIA H100 80GB HBM3", "float32", 494.5e12),
        ("NVIDIA H100 PCIe", "bfloat16", 756e12),
        ("NVIDIA H200", "bfloat16", 989e12),
        ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
        ("TPU v4", "bfloat16", 275e12),
        ("TPU v5 lite", "bfloat16", 197e12),
        ("TPU v5", "bfloat16", 459e12),
        ("TPU v6 lite", "bfloat16", 918e12),
        ("cpu", "float32", None),
    ],
)
def test_known_device_peaks(kind, dtype, peak):
    assert device_peak_flops(types.SimpleNamespace(device_kind=kind), dtype) == peak
