"""A PyTorch reference of the lecture's GPT, written from the lecture (tests and benchmarks only).

Module structure and names are the lecture's `gpt.py`, so `state_dict()` keys are too
(`token_embedding_table.weight`, `blocks.0.sa.heads.0.key.weight`, `blocks.0.ffwd.net.0.weight`, ...).
Hyperparameters are constructor arguments instead of globals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F


class Head(nn.Module):
    """One head of causal self-attention."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)  # (B, T, hs)
        q = self.query(x)  # (B, T, hs)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)  # (B, T, hs)
        return wei @ v  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """Several heads in parallel, concatenated and projected."""

    def __init__(self, n_embd: int, num_heads: int, head_size: int, block_size: int, dropout: float):
        super().__init__()
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout) for _ in range(num_heads)])
        self.proj = nn.Linear(head_size * num_heads, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class FeedFoward(nn.Module):  # sic: the lecture's spelling, kept so state_dict keys match
    """Linear -> ReLU -> Linear -> Dropout."""

    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float):
        super().__init__()
        head_size = n_embd // n_head
        self.sa = MultiHeadAttention(n_embd, n_head, head_size, block_size, dropout)
        self.ffwd = FeedFoward(n_embd, dropout)
        self.ln1 = nn.LayerNorm(n_embd)
        self.ln2 = nn.LayerNorm(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class GPTLanguageModel(nn.Module):
    """The lecture's final model, returning (logits, loss) like the lecture."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, dropout: float):
        super().__init__()
        self.block_size = block_size
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, block_size, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        B, T = idx.shape
        tok_emb = self.token_embedding_table(idx)  # (B, T, C)
        pos_emb = self.position_embedding_table(torch.arange(T, device=idx.device))  # (T, C)
        x = self.ln_f(self.blocks(tok_emb + pos_emb))
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        B, T, C = logits.shape
        return logits, F.cross_entropy(logits.view(B * T, C), targets.view(B * T))

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """The lecture's sampler: rerun the model on the last block_size tokens for every new token."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.block_size :])
            probs = F.softmax(logits[:, -1, :], dim=-1)  # (B, V)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


def load_jaxgpt_params(model: GPTLanguageModel, params) -> GPTLanguageModel:
    """Copy a jaxgpt GPT's params (lecture switches) into `model`: kernels transposed, heads split."""
    n_head = len(model.blocks[0].sa.heads)

    def tensor(array) -> torch.Tensor:
        return torch.from_numpy(np.array(array, dtype=np.float32))

    def linear(dense, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.weight": tensor(dense["kernel"]).T}
        if "bias" in dense:
            out[f"{prefix}.bias"] = tensor(dense["bias"])
        return out

    def layer_norm(ln, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": tensor(ln["scale"]), f"{prefix}.bias": tensor(ln["bias"])}

    state = {
        "token_embedding_table.weight": tensor(params["token_embedding_table"]["embedding"]),
        "position_embedding_table.weight": tensor(params["position_embedding_table"]["embedding"]),
        **layer_norm(params["ln_f"], "ln_f"),
        **linear(params["lm_head"], "lm_head"),
    }
    n_layer = sum(name.startswith("blocks_") for name in params)
    for i in range(n_layer):
        block, prefix = params[f"blocks_{i}"], f"blocks.{i}"
        C = block["sa"]["query"]["kernel"].shape[0]
        hs = C // n_head
        for h in range(n_head):  # jaxgpt's (C, C) projections hold the heads side by side in their outputs
            for name in ("key", "query", "value"):
                kernel = tensor(block["sa"][name]["kernel"])  # (C, C)
                state[f"{prefix}.sa.heads.{h}.{name}.weight"] = kernel[:, h * hs:(h + 1) * hs].T
        state.update(linear(block["sa"]["proj"], f"{prefix}.sa.proj"))
        state.update(linear(block["ffwd"]["fc"], f"{prefix}.ffwd.net.0"))
        state.update(linear(block["ffwd"]["proj"], f"{prefix}.ffwd.net.2"))
        state.update(layer_norm(block["ln1"], f"{prefix}.ln1"))
        state.update(layer_norm(block["ln2"], f"{prefix}.ln2"))
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert all(key.endswith(".tril") for key in missing), missing  # only the causal-mask buffers keep theirs
    return model


def train_lecture(text: str, *, batch_size: int = 64, block_size: int = 256, n_layer: int = 6, n_head: int = 6,
                  n_embd: int = 384, dropout: float = 0.2, learning_rate: float = 3e-4, max_iters: int = 5000,
                  eval_interval: int = 500, eval_iters: int = 200, seed: int = 1337, device: str = "cpu",
                  autocast_dtype: torch.dtype | None = None,
                  on_eval: Callable[[int, dict[str, float]], None] | None = None) -> dict[int, dict[str, float]]:
    """gpt.py's training loop (defaults: its hyperparameters): character tokens, the 90/10 split, `get_batch`
    (torch.randint + stack, copied to `device`), AdamW, and `estimate_loss` (`eval_iters` batches per split) every
    `eval_interval` steps and at the last; optionally under `torch.autocast(autocast_dtype)`. Returns
    {step: {"train": loss, "val": loss}}; `on_eval(step, losses)` is called as each evaluation finishes."""
    torch.manual_seed(seed)
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    autocast = (torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())

    def get_batch(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = splits[split]
        ix = torch.randint(len(d) - block_size, (batch_size,))
        x = torch.stack([d[i:i + block_size] for i in ix])  # (B, T)
        y = torch.stack([d[i + 1:i + block_size + 1] for i in ix])  # (B, T)
        return x.to(device), y.to(device)

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                with autocast:
                    losses[k] = model(*get_batch(split))[1].item()
            out[split] = losses.mean().item()
        model.train()
        return out

    model = GPTLanguageModel(len(chars), block_size, n_layer, n_head, n_embd, dropout).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    evaluations = {}
    for it in range(max_iters):
        if it % eval_interval == 0 or it == max_iters - 1:
            evaluations[it] = estimate_loss()
            if on_eval:
                on_eval(it, evaluations[it])
        with autocast:
            _, loss = model(*get_batch("train"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return evaluations
