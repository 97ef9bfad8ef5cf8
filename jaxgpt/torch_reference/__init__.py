"""PyTorch models that jaxgpt is checked and measured against, written from their sources (they need torch).

- `lecture`: the lecture's gpt.py (`GPTLanguageModel`), with helpers that copy jaxgpt params into it;
- `nanogpt`: nanoGPT's model.py (fused qkv, GELU, optional biases, tied head);
- `sdpa`: the lecture's architecture written the nanoGPT way (fused qkv, scaled_dot_product_attention), for
  speed comparisons.

The parity tests (tests/test_parity.py) and the benchmarks import them from here.
"""
