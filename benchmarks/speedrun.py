"""The CPU speedrun: wall time to val loss <= 1.88 on tiny Shakespeare, against nanoGPT's CPU recipe.

    JAXGPT_DATA=path/to/input.txt python benchmarks/speedrun.py [--rounds=3] [--config=speedrun] [--field=value ...]

Each round runs, as whole processes in turns (the side that goes first alternates):

- nanoGPT's CPU recipe ("I only have a macbook": 4 layers, 4 heads, n_embd 128, block 64, batch 12, 2000 steps,
  lr 1e-3 cosine to 1e-4, warmup 100, beta2 0.99, dropout 0), trained by the nanoGPT-style PyTorch loop of
  benchmarks/vs_nanogpt.py, timed whole as nanoGPT's train.py would be (its evaluation at the start, `eval_iters=20`
  batches per split);
- `python -m jaxgpt.train --config=speedrun` (configs/speedrun.py) plus any extra flags, timed whole: imports,
  compiling (with the persistent compilation cache as a user has it: `--cold` empties it first), training and
  its final evaluation.

Both sides end with the record's val loss, inside their timing: the mean next-character loss over the whole val
split in consecutive windows of the model's block size (jaxgpt's `eval_mode="full"`; the PyTorch loop computes
the same), and a train loss estimate. A record needs val <= 1.88 and its time; the target is at most 1/3 of
nanoGPT's recipe time. benchmarks/SPEEDRUN.md logs the records.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from jaxgpt.store.rundir import RunDir
from jaxgpt.system.compile_cache import default_dir

TARGET_VAL = 1.88
NANOGPT_CPU_RECIPE = "s"  # vs_nanogpt.SIZES["s"]: nanoGPT's "I only have a macbook" settings
NANOGPT_EVAL_ITERS = 20


def nanogpt_run(data_path: str, seed: int, max_iters: int | None) -> dict:
    """The PyTorch side, in its own process (benchmarks/vs_nanogpt.py --worker), timed whole."""
    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "vs_nanogpt.py"), "--worker", NANOGPT_CPU_RECIPE,
           f"--data_path={data_path}", f"--eval_iters={NANOGPT_EVAL_ITERS}", f"--seed={seed}", "--eval_at_start",
           "--full_val"]
    if max_iters:
        cmd.append(f"--max_iters={max_iters}")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall_s": result["wall_s"], "val": result["val"]}


def jaxgpt_run(data_path: str, config: str, flags: list[str], cold: bool) -> dict:
    """`python -m jaxgpt.train --config=CONFIG`, timed whole; its val loss from metrics.jsonl (eval_mode=full)."""
    if cold:
        shutil.rmtree(os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir(), ignore_errors=True)
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, "-m", "jaxgpt.train", f"--config={config}", f"--data_path={data_path}",
               f"--out_dir={out_dir}", "--progress=false", *flags]
        tic = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - tic
        last = RunDir(out_dir).read_metrics()[-1]
    return {"wall_s": wall, "val": last["val_loss"], "step": last["step"]}


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("JAXGPT_DATA"), help="tiny Shakespeare input.txt")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side (default: %(default)s)")
    parser.add_argument("--config", default="speedrun", help="jaxgpt's config (default: %(default)s)")
    parser.add_argument("--cold", action="store_true", help="empty the compilation cache before each jaxgpt run")
    parser.add_argument("--nanogpt_iters", type=int, help="override nanoGPT's 2000 steps (smoke tests)")
    parser.add_argument("--seed", type=int, default=1337)
    args, flags = parser.parse_known_args()

    print(f"date: {datetime.datetime.now():%Y-%m-%d %H:%M}  machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores  load: {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join(sys.argv)}")
    results: dict[str, list[dict]] = {"nanoGPT recipe": [], f"jaxgpt {args.config}": []}
    for round_ in range(args.rounds):
        sides = list(results) if round_ % 2 == 0 else list(results)[::-1]
        for side in sides:
            if side == "nanoGPT recipe":
                results[side].append(nanogpt_run(args.data_path, args.seed, args.nanogpt_iters))
            else:
                results[side].append(jaxgpt_run(args.data_path, args.config, flags, args.cold))
    print(f"\n{'side':<22} {'wall s':>22} {'val loss (whole split)':>26}")
    for side, runs in results.items():
        print(f"{side:<22} {spread([r['wall_s'] for r in runs]):>22} {spread([r['val'] for r in runs], 4):>26}")
    nanogpt, ours = (statistics.median(r["wall_s"] for r in runs) for runs in results.values())
    reached = all(r["val"] <= TARGET_VAL for r in results[f"jaxgpt {args.config}"])
    print(f"\njaxgpt {args.config} reached val <= {TARGET_VAL} in every run: {reached}; its median wall time is "
          f"{ours / nanogpt:.3f} of nanoGPT's recipe (target <= 0.333)")


if __name__ == "__main__":
    main()
