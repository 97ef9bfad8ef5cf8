"""The lecture's final model (gpt.py): 10.79M parameters, context 256, dropout 0.2."""

from jaxgpt import GPTConfig, TrainConfig

config = TrainConfig(
    model=GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    batch_size=64,
    learning_rate=3e-4,
    max_iters=5000,
    eval_interval=500,
    eval_iters=200,
)
