"""The CPU speedrun: the least wall time to val loss <= 1.88 on tiny Shakespeare (benchmarks/SPEEDRUN.md).

The modern recipe on a model the size of nanoGPT's CPU recipe: rotary positions, RMSNorm, QK-norm, no biases, an
untied head, zero-initialised output projections, and Muon for the blocks' matrices (AdamW for the rest); the
lecture's ReLU and no logit soft-capping, which at this length train better without. Muon's momentum at 0.8 (not
0.95: a run this short does better trusting its latest gradients) and nanoGPT's warmup, which learns from step 0.
A bigger batch and far fewer steps than nanoGPT's 2000; one evaluation, over the whole val split, at the end (its
train-loss estimate over as many tokens as nanoGPT's); no loss plot of that one point and no inspect page.
"""

from jaxgpt import GPTConfig, TrainConfig

config = TrainConfig(
    model=GPTConfig(
        block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
        position="rope", norm="rmsnorm", qk_norm=True, activation="relu", bias=False, lm_head_bias=False,
        zero_init_proj=True,
    ),
    batch_size=32,
    max_iters=115,
    optimizer="muon",
    muon_lr=0.02,
    muon_momentum=0.8,
    learning_rate=7e-3,  # AdamW: embeddings, head, norms
    weight_decay=0.0,
    lr_schedule="cosine",
    warmup_iters=20,
    warmup="nanogpt",  # lr * (i + 1) / (warmup_iters + 1)
    min_lr=7e-4,
    eval_interval=115,
    eval_at_start=False,
    eval_mode="full",
    eval_iters=8,  # the train-loss estimate over 8 x 32 windows: nanoGPT's 20 x 12, in tokens
    checkpoint_interval=115,
    sample_chars=0,
    plot=False,
    inspect=False,
)
