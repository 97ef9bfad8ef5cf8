"""PyTorch models (and an optimizer) that jaxgpt is checked and measured against, written from their sources
(they need torch).

- `lecture`: the lecture's gpt.py (`GPTLanguageModel`), with helpers that copy jaxgpt params into it;
- `nanogpt`: nanoGPT's model.py (fused qkv, GELU, optional biases, tied head);
- `sdpa`: the lecture's architecture written the nanoGPT way (fused qkv, scaled_dot_product_attention), for
  speed comparisons;
- `modern`: jaxgpt's GPT with every GPTConfig switch, the modern recipe included (RoPE, RMSNorm, QK-norm, ReLU
  squared, zero-initialised projections, logit soft-capping), with a mapping from jaxgpt params;
- `muon`: Keller Jordan's Muon optimizer (momentum, Nesterov, Newton-Schulz orthogonalisation) with optax's
  update scaling, and which of a model's parameters it updates.

The parity tests (tests/test_parity.py, tests/test_modern.py, tests/test_optim.py) and the benchmarks import them
from here.
"""
