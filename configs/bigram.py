"""The lecture's bigram model: a (vocab, vocab) table of next-token logits."""

from jaxgpt import GPTConfig, TrainConfig

config = TrainConfig(
    # only block_size (the context of each training example) is used by the table
    model=GPTConfig(model_type="bigram", block_size=8, n_layer=1, n_head=1, n_embd=32, dropout=0.0),
    batch_size=32,
    learning_rate=1e-2,
    max_iters=3000,
    eval_interval=300,
    eval_iters=200,
)
