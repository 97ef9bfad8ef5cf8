"""The lecture's first GPT hyperparameters: 0.21M parameters, context 32, trains on a laptop CPU."""

from jaxgpt import GPTConfig, TrainConfig

config = TrainConfig(
    model=GPTConfig(block_size=32, n_layer=4, n_head=4, n_embd=64, dropout=0.0),
    batch_size=16,
    learning_rate=1e-3,
    max_iters=5000,
    eval_interval=100,
    eval_iters=200,
)
