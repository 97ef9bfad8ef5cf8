"""nanoGPT's finetune_shakespeare recipe, scaled to a CPU: GPT-2 (124M) fine-tuned on tiny Shakespeare.

From nanoGPT's config/finetune_shakespeare.py and its train.py defaults: start from GPT-2's weights, a constant
learning rate of 3e-5 (no warmup, no decay), AdamW with betas (0.9, 0.95), weight decay 0.1 on the weight matrices,
gradient clipping at 1.0, evaluations every 5 steps, 20 steps. nanoGPT starts from gpt2-xl with 32 sequences of
1024 tokens per step (32,768 tokens, about 1/9 of an epoch of Shakespeare's 302k GPT-2 tokens); here gpt2 (124M)
with 4 sequences of 256 (1,024 tokens per step; the position table cropped to 256 rows), which a 2-core CPU runs
in seconds per step (benchmarks/RESULTS.md, "Fine-tuning GPT-2 on a CPU"). Dropout 0.1, as nanoGPT's train.py
suggests for fine-tuning. Prepare the data once with GPT-2's encoding:

    python -m jaxgpt.prepare input.txt --tokenizer=gpt2 --out=data/shakespeare_gpt2
    python -m jaxgpt.train --config=finetune_shakespeare
"""

from jaxgpt import GPTConfig, TrainConfig

config = TrainConfig(
    init_from="gpt2",
    data_path="data/shakespeare_gpt2",
    out_dir="out-shakespeare",
    model=GPTConfig(block_size=256, dropout=0.1),  # the rest of the model is GPT-2's (--init_from)
    batch_size=4,
    max_iters=20,
    eval_interval=5,
    eval_iters=10,
    checkpoint_interval=20,
    keep_checkpoints=1,
    learning_rate=3e-5,
    lr_schedule="constant",
    beta2=0.95,
    weight_decay=0.1,
    decay_all_params=False,
    grad_clip=1.0,
    sample_chars=200,
)
