"""Muon in PyTorch (tests only), written from Keller Jordan's design (github.com/KellerJordan/Muon).

Muon updates a hidden weight matrix W (PyTorch's (out, in)) with the orthogonalised momentum of its gradient:

    buf <- momentum * buf + (1 - momentum) * grad
    u   <- Nesterov: momentum * buf + (1 - momentum) * grad, each term bias-corrected as in Adam
    O   <- newton_schulz(u): 5 quintic steps from u / (||u||_F + eps), roughly U V^T of u's SVD
    W   <- W * (1 - lr * weight_decay) - lr * sqrt(max(1, out / in)) * O

Keller Jordan's Muon takes `grad.lerp(buf, momentum)` without bias correction and runs the iteration in
bfloat16; the bias correction (optax.contrib.muon's; it fades as momentum**step -> 0) and the dtype of the
parameters (float32 or float64 here) make this the optimizer jaxgpt's `--optimizer=muon` should equal.
Embeddings, the output layer, biases and norm scales are not Muon's: `hidden_matrices` picks its parameters.
"""

from __future__ import annotations

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic: slope 3.4445 at zero


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-8,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS) -> torch.Tensor:
    """An approximately semi-orthogonal matrix (singular values near 1) with the singular vectors of `g` (m, n)."""
    a, b, c = coefficients
    transposed = g.size(0) > g.size(1)  # iterate on the wide form: X X^T is the smaller Gram matrix
    x = g.T if transposed else g
    x = x / (torch.linalg.matrix_norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters; `lr`, `momentum` and `weight_decay` are read from the group at every step."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 nesterov: bool = True, ns_steps: int = 5, eps: float = 1e-8):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov,
                    "ns_steps": ns_steps, "eps": eps}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            beta = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                assert p.ndim == 2, "Muon is for weight matrices"
                state = self.state[p]
                if not state:
                    state["step"], state["buf"] = 0, torch.zeros_like(p)
                state["step"] += 1
                t, buf = state["step"], state["buf"]
                buf.lerp_(p.grad, 1 - beta)
                if group["nesterov"]:
                    u = beta * buf / (1 - beta ** (t + 1)) + (1 - beta) * p.grad / (1 - beta**t)
                else:
                    u = buf / (1 - beta**t)
                o = newton_schulz(u, group["ns_steps"], group["eps"])
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5  # (out, in): wider outputs, larger updates
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(o, alpha=-group["lr"] * scale)


def hidden_matrices(model: nn.Module) -> list[str]:
    """Names of the parameters Muon updates: the matrices inside the transformer blocks (`model.blocks`)."""
    return [f"blocks.{name}" for name, p in model.blocks.named_parameters() if p.ndim >= 2]
