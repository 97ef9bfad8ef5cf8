"""nanoGPT's shakespeare_char recipe on the lecture's model: 10.79M parameters, context 256, dropout 0.2.

From nanoGPT's config/train_shakespeare_char.py (and its train.py defaults): AdamW with lr 1e-3, 100 warmup
steps as nanoGPT ramps them (`warmup="nanogpt"`), then cosine decay to 1e-4 at step 5000, beta2 0.99, weight
decay 0.1 on every matrix, the embedding tables included (`decay_embeddings`), none on biases and LayerNorm,
gradient clipping at 1.0, batch 64 x 256, and GPT-2's init of the residual projections, std
0.02 / sqrt(2 * n_layer) (`scale_proj_init`). The architecture stays the lecture's; `--activation=gelu
--tie_embeddings=true --bias=false --lm_head_bias=false` makes it nanoGPT's (tests/test_parity.py holds the two
to the same initial spread of every parameter and the same first steps).
nanoGPT reports val loss 1.4697 with this recipe; the lecture's recipe (configs/lecture.py) reaches 1.48.
"""

from jaxgpt import GPTConfig, TrainConfig

config = TrainConfig(
    model=GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, scale_proj_init=True),
    batch_size=64,
    max_iters=5000,
    eval_interval=250,
    eval_iters=200,
    learning_rate=1e-3,
    lr_schedule="cosine",
    warmup_iters=100,
    warmup="nanogpt",
    min_lr=1e-4,
    beta2=0.99,
    weight_decay=0.1,
    decay_all_params=False,
    decay_embeddings=True,
    grad_clip=1.0,
)
