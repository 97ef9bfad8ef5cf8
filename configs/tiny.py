"""A seconds-long run on CPU, for tests and smoke checks."""

from jaxgpt import GPTConfig, TrainConfig

config = TrainConfig(
    model=GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1),
    batch_size=8,
    learning_rate=1e-3,
    max_iters=40,
    eval_interval=20,
    eval_iters=4,
    sample_chars=50,
)
