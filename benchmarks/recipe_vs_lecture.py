"""nanoGPT's recipe (configs/shakespeare_char.py) against the lecture's, on the `small` model, same steps and seed.

    python benchmarks/recipe_vs_lecture.py [--max_iters=5000] [--seeds=1337] [--field=value ...]

The lecture size takes hours per run on a CPU, so the comparison runs on `small` (0.21M parameters,
context 32, batch 16): "lecture" is configs/small.py as it is (constant lr 1e-3, AdamW with torch defaults);
"nanoGPT" is the same model and batch with every optimization setting of configs/shakespeare_char.py
(warmup + cosine lr 1e-3 -> 1e-4, beta2 0.99, weight decay 0.1 on matrices, grad clip 1.0, dropout 0.2);
"nanoGPT, dropout 0" drops only the dropout, which a model this small (underfitting) does not need.
Prints the final train and val loss of each run and the wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time

from jaxgpt.cli import parse_train_args
from jaxgpt.core.config import TrainConfig, load_config
from jaxgpt.run.training import train

RECIPE_FIELDS = ("learning_rate", "lr_schedule", "warmup_iters", "min_lr", "beta1", "beta2", "eps", "weight_decay",
                 "decay_all_params", "grad_clip")


def recipes(base: TrainConfig) -> dict[str, TrainConfig]:
    """The three runs: base (lecture), base with nanoGPT's optimization settings, and that without dropout."""
    nano = load_config("shakespeare_char")
    recipe = dataclasses.replace(base, **{f: getattr(nano, f) for f in RECIPE_FIELDS},
                                 model=dataclasses.replace(base.model, dropout=nano.model.dropout))
    return {
        "lecture": base,
        "nanoGPT": recipe,
        "nanoGPT, dropout 0": dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, dropout=0.0)),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1337", help="comma-separated seeds; one run per recipe and seed")
    args, rest = parser.parse_known_args(argv)
    base = parse_train_args(["--config=small", "--progress=false", "--sample_chars=0", "--eval_interval=1000",
                             *rest], prog="recipe_vs_lecture.py", description="")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.node()}, "
          f"{os.cpu_count()} cores; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"command: python benchmarks/recipe_vs_lecture.py {' '.join(argv)}")
    print(f"small model, {base.max_iters} steps of batch {base.batch_size} x {base.block_size}, seeds {seeds}\n")
    print("| recipe | lr schedule | beta2 | weight decay | clip | dropout | train loss | val loss | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, config in recipes(base).items():
        train_losses, val_losses, seconds = [], [], []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as out_dir:
                tic = time.perf_counter()
                result = train(dataclasses.replace(config, seed=seed, out_dir=out_dir, overwrite=True),
                               log=lambda _: None)
                seconds.append(time.perf_counter() - tic)
            train_losses.append(result.history[-1]["train_loss"])
            val_losses.append(result.history[-1]["val_loss"])
        schedule = (f"cosine {config.learning_rate:g}->{config.min_lr:g}, warmup {config.warmup_iters}"
                    if config.lr_schedule == "cosine" else f"constant {config.learning_rate:g}")
        decay = f"{config.weight_decay:g}" + ("" if config.decay_all_params else " (matrices)")
        print(f"| {name} | {schedule} | {config.beta2:g} | {decay} | {config.grad_clip:g} | {config.model.dropout:g} "
              f"| {statistics.mean(train_losses):.4f} | {statistics.mean(val_losses):.4f} "
              f"| {statistics.mean(seconds):.0f} |", flush=True)
        if len(seeds) > 1:
            print(f"|  | (val per seed: {', '.join(f'{v:.4f}' for v in val_losses)}) | | | | | | | |")


if __name__ == "__main__":
    main(sys.argv[1:])
