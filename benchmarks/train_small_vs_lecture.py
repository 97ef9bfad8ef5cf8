"""`small` trained by jaxgpt vs the lecture's PyTorch loop: same settings, same machine, one run.

Prints the machine, each side's wall time for the whole 5000-step run (model creation, training, evaluations;
jaxgpt also pays imports and compilation as a fresh `python -m jaxgpt.train` process) and the val losses at
step 2000 and at the end. Usage:

    JAXGPT_DATA=../shared/data/tinyshakespeare/input.txt python benchmarks/train_small_vs_lecture.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from jaxgpt.torch_reference.lecture import train_lecture

SMALL = {"batch_size": 16, "block_size": 32, "n_embd": 64, "n_head": 4, "n_layer": 4, "dropout": 0.0,
         "learning_rate": 1e-3}


def lecture_loop(text: str, max_iters: int, eval_interval: int, eval_iters: int, seed: int) -> dict[int, float]:
    """The lecture's gpt.py training loop with the `small` hyperparameters; returns {step: val loss}."""
    evaluations = train_lecture(text, **SMALL, max_iters=max_iters, eval_interval=eval_interval,
                                eval_iters=eval_iters, seed=seed)
    return {step: losses["val"] for step, losses in evaluations.items()}


def jaxgpt_run(data_path: str, max_iters: int, eval_interval: int, eval_iters: int, seed: int) -> dict[int, float]:
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, "-m", "jaxgpt.train", "--config=small", f"--data_path={data_path}",
               f"--max_iters={max_iters}", f"--eval_interval={eval_interval}", f"--eval_iters={eval_iters}",
               f"--seed={seed}", f"--out_dir={out_dir}/run", "--progress=false", "--sample_chars=0"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        lines = (Path(out_dir) / "run" / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["val_loss"] for r in map(json.loads, lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("JAXGPT_DATA"), help="tiny Shakespeare input.txt")
    parser.add_argument("--max_iters", type=int, default=5000)
    parser.add_argument("--eval_interval", type=int, default=500)
    parser.add_argument("--eval_iters", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    if not args.data_path:
        parser.error("give --data_path or set JAXGPT_DATA")
    text = Path(args.data_path).read_text(encoding="utf-8")
    loop = (args.max_iters, args.eval_interval, args.eval_iters, args.seed)

    print(f"date: {datetime.date.today()}  machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores  torch {torch.__version__}  load: {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join(sys.argv)}")
    results = {}
    for name, run in (("lecture PyTorch loop", lambda: lecture_loop(text, *loop)),
                      ("jaxgpt", lambda: jaxgpt_run(args.data_path, *loop))):
        tic = time.perf_counter()
        val = run()
        results[name] = (time.perf_counter() - tic, val)

    print(f"\n{'implementation':<22} {'wall s':>8} {'val@2000':>9} {'val@last':>9} {'last step':>9}")
    for name, (wall, val) in results.items():
        last = max(val)
        at_2000 = val.get(2000, float("nan"))
        print(f"{name:<22} {wall:8.1f} {at_2000:9.4f} {val[last]:9.4f} {last:9d}")
    (torch_wall, _), (jax_wall, _) = results.values()
    print(f"\njaxgpt wall time / lecture wall time: {jax_wall / torch_wall:.3f}")


if __name__ == "__main__":
    main()
