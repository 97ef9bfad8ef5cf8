"""A PyTorch reference of jaxgpt's GPT with every GPTConfig switch, the modern recipe included (tests only).

Written in the plain style of lecture.py, from the formulas of the recipe's sources:

- `position`: "learned" (the lecture's position table) or "rope", rotary embeddings of queries and keys in Llama's
  rotate-half form (RoFormer; Hugging Face's `apply_rotary_pos_emb`): x * cos + rotate_half(x) * sin, where dims
  i and i + hs/2 turn together by position * rope_theta**(-2i/hs);
- `norm`: "layernorm" (with or without bias) or "rmsnorm", x / sqrt(mean(x^2) + eps) * weight (Llama's RMSNorm);
- `qk_norm`: RMSNorm of each head's queries and keys over head_size (one weight (hs,) for all heads), before the
  rotation (modded-nanogpt's order);
- `activation`: relu, gelu (exact), gelu_tanh, relu2 (ReLU squared, modded-nanogpt);
- `zero_init_proj`: the attention and MLP output projections start at zero;
- `logit_softcap`: logits = cap * tanh(logits / cap) (Gemma 2, modded-nanogpt);
- `bias`, `qkv_bias`, `lm_head_bias`, `tie_embeddings` as in GPTConfig.

State_dict keys follow jaxgpt's parameter tree (`blocks.0.sa.query.weight` is (C, C), all heads side by side;
`blocks.0.sa.q_norm.weight`, `blocks.0.ffwd.fc.weight`, `ln_f.weight`, `lm_head.weight`), so
`jaxgpt_state_dict` maps jaxgpt params, or gradients, by renaming and transposing kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclasses.dataclass
class ModernConfig:
    """The fields of jaxgpt's GPTConfig that describe the model (same names, same defaults)."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    activation: str = "relu"
    tie_embeddings: bool = False
    bias: bool = True
    qkv_bias: bool = False
    lm_head_bias: bool = True
    layer_norm_eps: float = 1e-5
    position: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    qk_norm: bool = False
    zero_init_proj: bool = False
    logit_softcap: float = 0.0


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension."""

    def __init__(self, ndim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(config: ModernConfig, ndim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(ndim, config.layer_norm_eps)
    return nn.LayerNorm(ndim, eps=config.layer_norm_eps, bias=config.bias)


def rotary_cos_sin(T: int, head_size: int, theta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hs) of positions 0..T-1, computed in float64 and rounded to `dtype`."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float64) / head_size)  # (hs/2,)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class CausalSelfAttention(nn.Module):
    """All heads at once: query, key and value projections (C, C), optional QK-norm and RoPE, causal softmax."""

    def __init__(self, config: ModernConfig):
        super().__init__()
        C, self.n_head, self.config = config.n_embd, config.n_head, config
        self.head_size = C // config.n_head
        self.query = nn.Linear(C, C, bias=config.qkv_bias)
        self.key = nn.Linear(C, C, bias=config.qkv_bias)
        self.value = nn.Linear(C, C, bias=config.qkv_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_size, config.layer_norm_eps)
            self.k_norm = RMSNorm(self.head_size, config.layer_norm_eps)
        self.proj = nn.Linear(C, C, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
                   for lin in (self.query, self.key, self.value))
        if self.config.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.config.position == "rope":
            cos, sin = rotary_cos_sin(T, self.head_size, self.config.rope_theta, x.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        wei = q @ k.transpose(-2, -1) * self.head_size**-0.5  # (B, nh, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        wei = self.attn_dropout(F.softmax(wei.masked_fill(~causal, float("-inf")), dim=-1))
        y = (wei @ v).transpose(1, 2).reshape(B, T, C)  # heads side by side
        return self.resid_dropout(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, config: ModernConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.activation = config.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if self.activation == "relu":
            x = F.relu(x)
        elif self.activation == "gelu":
            x = F.gelu(x)
        elif self.activation == "gelu_tanh":
            x = F.gelu(x, approximate="tanh")
        elif self.activation == "relu2":
            x = F.relu(x).square()
        else:
            raise ValueError(f"unknown activation {self.activation!r}")
        return self.dropout(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: ModernConfig):
        super().__init__()
        self.ln1, self.sa = make_norm(config, config.n_embd), CausalSelfAttention(config)
        self.ln2, self.ffwd = make_norm(config, config.n_embd), FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class GPT(nn.Module):
    """idx (B, T) -> logits (B, T, V)."""

    def __init__(self, config: ModernConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.n_embd)
        if config.position == "learned":
            self.position_embedding_table = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.lm_head_bias)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding_table.weight
        self.apply(self._init_weights)
        if config.zero_init_proj:
            for block in self.blocks:
                torch.nn.init.zeros_(block.sa.proj.weight)
                torch.nn.init.zeros_(block.ffwd.proj.weight)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.token_embedding_table(idx)  # (B, T, C)
        if self.config.position == "learned":
            x = x + self.position_embedding_table(torch.arange(T, device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits


def jaxgpt_state_dict(params: Mapping, tie_embeddings: bool) -> dict[str, torch.Tensor]:
    """jaxgpt params (or gradients) of any GPTConfig under this model's state_dict names, float32: `blocks_0/sa/
    query/kernel` -> `blocks.0.sa.query.weight` transposed, `.../scale` and `.../embedding` -> `.weight`, the tied
    head's `lm_head_bias` -> `lm_head.bias`, and the tied `lm_head.weight` (the token embedding) when tied."""
    state = {}

    def visit(tree: Mapping, path: tuple[str, ...]) -> None:
        for name, value in tree.items():
            if isinstance(value, Mapping):
                visit(value, (*path, name.replace("blocks_", "blocks.")))
                continue
            tensor = torch.from_numpy(np.array(value, dtype=np.float32))
            if name == "lm_head_bias":
                state["lm_head.bias"] = tensor
            elif name == "kernel":  # flax Dense (in, out) -> torch Linear (out, in)
                state[".".join((*path, "weight"))] = tensor.T.contiguous()
            elif name in ("scale", "embedding"):
                state[".".join((*path, "weight"))] = tensor
            else:
                state[".".join((*path, name))] = tensor

    visit(params, ())
    if tie_embeddings:
        state["lm_head.weight"] = state["token_embedding_table.weight"]
    return state
