"""jaxgpt against a nanoGPT-style PyTorch training loop: same model, same recipe, whole processes in turns.

The PyTorch side follows nanoGPT's design: its model.py (jaxgpt/torch_reference/nanogpt.py: fused qkv,
scaled_dot_product_attention, exact GELU, no biases, tied head) and its train.py loop (random windows with
torch.randint, AdamW with its two decay groups (matrices decayed, vectors not), warmup + cosine learning rate,
gradient clipping at 1.0, `estimate_loss` over `eval_iters` batches per split in eval mode). jaxgpt runs
`python -m jaxgpt.train` with the same architecture and recipe. Each size of the sweep runs `--rounds` times,
alternating which side goes first; each run is a fresh process, timed whole (imports, compilation, training, one
evaluation at the end: the train loss over `--eval_iters` batches and the val loss over the whole val split in
consecutive windows, every val token once, as jaxgpt's `eval_mode=full`; both sides compute the same).

    JAXGPT_DATA=path/to/input.txt python benchmarks/vs_nanogpt.py [--sizes=s,m] [--rounds=3]

The recipes are the same in every detail that changes training: jaxgpt runs with `--decay_embeddings=true`
(nanoGPT decays every matrix, embeddings included), `--warmup=nanogpt` (its warmup's first step is not 0) and
`--scale_proj_init=true` (GPT-2's init of the residual projections); tests/test_parity.py holds the two sides
to the same init and the same first steps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxgpt.store.rundir import RunDir

# name: (n_layer, n_head, n_embd, block_size, batch_size, max_iters). "s" is nanoGPT's CPU recipe
# ("I only have a macbook"); the others span the sweep (n_embd 64-384, n_layer 2-6, block 32-256,
# batch 8-64) with step counts that keep one run of m, l and xl near a minute on a 2-core CPU.
SIZES = {
    "xs": (2, 2, 64, 32, 8, 2000),
    "s": (4, 4, 128, 64, 12, 2000),
    "m": (4, 6, 192, 128, 32, 150),
    "l": (6, 8, 256, 256, 32, 40),
    "xl": (6, 6, 384, 256, 64, 12),
}
RECIPE = {"learning_rate": 1e-3, "min_lr": 1e-4, "warmup_iters": 100, "beta1": 0.9, "beta2": 0.99,
          "weight_decay": 0.1, "grad_clip": 1.0}


def torch_run(data_path: str, size: tuple, eval_iters: int, seed: int, eval_at_start: bool = True,
              full_val: bool = False) -> dict:
    """nanoGPT's train.py loop, in this process; returns wall time, steps/s and the final losses: `estimate_loss`
    over `eval_iters` batches per split, or with `full_val` the val loss over the whole split as jaxgpt's
    eval_mode=full computes it (and the train estimate)."""
    start = time.perf_counter()
    import numpy as np
    import torch
    from torch.nn import functional as F

    from jaxgpt.torch_reference.nanogpt import GPT, NanoGPTConfig

    n_layer, n_head, n_embd, block_size, batch_size, max_iters = size
    torch.manual_seed(seed)
    text = Path(data_path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.uint16)  # nanoGPT's train.bin / val.bin
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}

    def get_batch(split: str):
        d = splits[split]
        ix = torch.randint(len(d) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(d[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(d[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    model = GPT(NanoGPTConfig(block_size=block_size, vocab_size=len(chars), n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd, dropout=0.0, bias=False))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": RECIPE["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=RECIPE["learning_rate"], betas=(RECIPE["beta1"], RECIPE["beta2"]))

    def get_lr(it: int) -> float:  # nanoGPT's: linear warmup, cosine decay to min_lr at max_iters
        warmup, lr, min_lr = RECIPE["warmup_iters"], RECIPE["learning_rate"], RECIPE["min_lr"]
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / (max_iters - warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(ratio, 1.0))) * (lr - min_lr)

    @torch.no_grad()
    def estimate_loss(names=("train", "val")) -> dict[str, float]:
        model.eval()
        out = {}
        for split in names:
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                x, y = get_batch(split)
                losses[k] = F.cross_entropy(model(x).view(-1, len(chars)), y.view(-1)).item()
            out[split] = losses.mean().item()
        model.train()
        return out

    if eval_at_start:
        estimate_loss()
    tic = time.perf_counter()
    x, y = get_batch("train")
    for it in range(max_iters):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        loss = F.cross_entropy(model(x).view(-1, len(chars)), y.view(-1))
        x, y = get_batch("train")  # nanoGPT prefetches the next batch while the forward is queued
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    train_s = time.perf_counter() - tic
    if full_val:
        losses = {**estimate_loss(("train",)), "val": whole_split_loss(model, splits["val"], block_size)}
    else:
        losses = estimate_loss()
    return {"wall_s": time.perf_counter() - start, "steps_per_s": max_iters / train_s, **losses}


def whole_split_loss(model, data, block_size: int, batch_size: int = 64) -> float:
    """The mean next-token loss over all of `data`: consecutive block_size windows, every token after the first
    predicted once (jaxgpt.run.training.Run.full_loss)."""
    import numpy as np
    import torch
    from torch.nn import functional as F

    n = len(data) - 1
    windows = -(-n // block_size)
    padded = np.zeros(windows * block_size + 1, dtype=np.int64)
    padded[:len(data)] = data
    x = torch.from_numpy(padded[:-1].reshape(windows, block_size))
    y = torch.from_numpy(padded[1:].reshape(windows, block_size))
    counted = (torch.arange(windows * block_size) < n).reshape(windows, block_size)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, windows, batch_size):
            logits = model(x[i:i + batch_size])
            losses = F.cross_entropy(logits.transpose(1, 2), y[i:i + batch_size], reduction="none")
            total += losses[counted[i:i + batch_size]].double().sum().item()
    return total / n


def jaxgpt_run(data_path: str, size: tuple, eval_iters: int, seed: int) -> dict:
    """`python -m jaxgpt.train` with the same model and recipe, as a subprocess timed whole."""
    n_layer, n_head, n_embd, block_size, batch_size, max_iters = size
    with tempfile.TemporaryDirectory() as out_dir:
        flags = [f"--n_layer={n_layer}", f"--n_head={n_head}", f"--n_embd={n_embd}", f"--block_size={block_size}",
                 f"--batch_size={batch_size}", f"--max_iters={max_iters}", f"--eval_interval={max_iters}",
                 f"--checkpoint_interval={max_iters}", f"--eval_iters={eval_iters}", f"--seed={seed}",
                 "--eval_at_start=false", "--eval_mode=full",
                 "--dropout=0", "--activation=gelu", "--tie_embeddings=true", "--bias=false", "--lm_head_bias=false",
                 "--qkv_bias=false", "--scale_proj_init=true", "--lr_schedule=cosine", "--decay_all_params=false",
                 "--decay_embeddings=true", "--warmup=nanogpt", "--progress=false",
                 "--plot=false",  # nanoGPT's train.py draws no loss curve (jaxgpt's: matplotlib's import, ~2 s)
                 "--sample_chars=0", f"--data_path={data_path}", f"--out_dir={out_dir}",
                 *(f"--{name}={value}" for name, value in RECIPE.items())]
        tic = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jaxgpt.train", "--config=small", *flags], check=True,
                       capture_output=True, text=True)
        wall = time.perf_counter() - tic
        records = RunDir(out_dir).read_metrics()
    last = records[-1]
    return {"wall_s": wall, "steps_per_s": last["tokens_per_sec"] / (batch_size * block_size),
            "train": last["train_loss"], "val": last["val_loss"]}


def run_side(side: str, data_path: str, size_name: str, eval_iters: int, seed: int) -> dict:
    """One whole process of `side`, so both pay their start-up."""
    if side == "jaxgpt":
        return jaxgpt_run(data_path, SIZES[size_name], eval_iters, seed)
    cmd = [sys.executable, __file__, "--worker", size_name, f"--data_path={data_path}", f"--eval_iters={eval_iters}",
           f"--seed={seed}", f"--max_iters={SIZES[size_name][5]}", "--full_val"]
    tic = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "wall_s": time.perf_counter() - tic}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("JAXGPT_DATA"), help="tiny Shakespeare input.txt")
    parser.add_argument("--sizes", default=",".join(SIZES), help="sizes to run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per size (default: %(default)s)")
    parser.add_argument("--eval_iters", type=int, default=20, help="batches of the final train loss "
                        "(default: %(default)s; the val loss is over the whole split)")
    parser.add_argument("--max_iters", type=int, help="override every size's steps (smoke tests)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # run the PyTorch side of this size here
    parser.add_argument("--eval_at_start", action="store_true", help=argparse.SUPPRESS)  # worker: nanoGPT's own
    parser.add_argument("--full_val", action="store_true", help=argparse.SUPPRESS)  # worker: val over the split
    args = parser.parse_args()
    if args.max_iters:
        for name, size in SIZES.items():
            SIZES[name] = (*size[:5], args.max_iters)
    if args.worker:
        print(json.dumps(torch_run(args.data_path, SIZES[args.worker], args.eval_iters, args.seed, args.eval_at_start,
                                   args.full_val)))
        return

    print(f"date: {datetime.datetime.now():%Y-%m-%d %H:%M}  machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores  load: {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join(sys.argv)}")
    print(f"\n{'size':<5} {'L/nh/C/T/B, steps':<24} {'side':<8} {'wall s':>20} {'steps/s':>22} {'val loss':>22}")
    summary = []
    for name in args.sizes.split(","):
        results = {"nanoGPT": [], "jaxgpt": []}
        for round_ in range(args.rounds):
            order = ("nanoGPT", "jaxgpt") if round_ % 2 == 0 else ("jaxgpt", "nanoGPT")
            for side in order:
                results[side].append(run_side(side, args.data_path, name, args.eval_iters, args.seed))
        shape = "/".join(map(str, SIZES[name][:5])) + f", {SIZES[name][5]}"
        for side, runs in results.items():
            print(f"{name:<5} {shape:<24} {side:<8} {spread([r['wall_s'] for r in runs]):>20} "
                  f"{spread([r['steps_per_s'] for r in runs]):>22} {spread([r['val'] for r in runs]):>22}")
        ratio = statistics.median(r["wall_s"] for r in results["nanoGPT"]) / statistics.median(
            r["wall_s"] for r in results["jaxgpt"])
        summary.append(f"{name}: {ratio:.2f}x")
    print("\njaxgpt speed / nanoGPT-style speed (median whole-process wall time): " + ", ".join(summary))


if __name__ == "__main__":
    main()
