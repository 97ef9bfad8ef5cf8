"""What jaxgpt does on a real NVIDIA GPU: run on a machine that has one (benchmarks/RESULTS.md, "On an H200").

Each case is a whole process, in turn, timed from its start (imports and compilation included, a cold compilation
cache for the first program of each shape):

- `jaxgpt`: `python -m jaxgpt.train` with the given flags, in a process that also prints the time of every log
  line and the device's peak memory (`memory_stats()["peak_bytes_in_use"]`) at the end.
- `torch`: the lecture's gpt.py loop (its model, AdamW, `estimate_loss` every `eval_interval` steps on
  `eval_iters` batches per split, batches gathered on the host and copied over) on the GPU, in float32 as gpt.py
  runs it (PyTorch's default: no TF32) or under bfloat16 autocast.
- `compiled`: jaxgpt's `--compile_for` check, but compiled for this process's real GPU instead of a deviceless
  one, to set its memory figures beside the deviceless prediction made on a CPU machine.

Usage (on the GPU machine): `JAXGPT_DATA=input.txt python benchmarks/gpu_run.py --out=DIR`; the table of cases
is `CASES` below. Writes DIR/gpu_run.json (every case's log, wall time, peak memory) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

START = time.perf_counter()

LECTURE_1000 = ["--config=lecture", "--max_iters=1000"]
ATTENTION_1024 = ["--config=lecture", "--block_size=1024", "--batch_size=8", "--dropout=0", "--max_iters=400",
                  "--eval_interval=200", "--eval_iters=20"]
NO_AUTOTUNE = {"XLA_FLAGS": "--xla_gpu_autotune_level=0"}  # XLA:GPU's default kernels, none timed at compile


class Case(NamedTuple):
    kind: str  # "jaxgpt", "torch" or "compiled"
    argv: list[str]
    env: dict[str, str] = {}  # added to the case's process environment (read only)


CASES: list[Case] = [
    Case("jaxgpt", ["--config=lecture"]),  # the lecture's run: 5,000 steps, bfloat16 matmuls (dtype auto on a GPU)
    Case("torch", ["--max_iters=1000", "--precision=float32"]),  # gpt.py as written
    Case("jaxgpt", [*LECTURE_1000, "--dtype=float32"]),  # XLA runs float32 matmuls on TF32 tensor cores
    Case("torch", ["--max_iters=1000", "--precision=bfloat16"]),  # under torch.autocast, as nanoGPT trains on a GPU
    Case("jaxgpt", [*LECTURE_1000]),
    Case("jaxgpt", [*ATTENTION_1024, "--attention=xla"]),
    Case("jaxgpt", [*ATTENTION_1024, "--attention=cudnn"]),
    Case("compiled", ["--config=lecture"]),
    Case("compiled", [*ATTENTION_1024, "--attention=xla"]),
    Case("compiled", [*ATTENTION_1024, "--attention=cudnn"]),
    Case("jaxgpt", [*LECTURE_1000, "--dtype=float32"], NO_AUTOTUNE),  # a first run's compile without autotuning
]


def stamped(line: str) -> None:
    print(f"[{time.perf_counter() - START:8.2f}s] {line}", flush=True)


def jaxgpt_case(argv: list[str]) -> None:
    import jax

    from jaxgpt.cli import parse_train_command
    from jaxgpt.run.training import train
    from jaxgpt.system import compile_cache

    config, _ = parse_train_command(argv)
    compile_cache.enable_default()
    stamped(f"devices: {jax.devices()}")
    train(config, log=stamped)
    stats = jax.devices()[0].memory_stats() or {}
    stamped(f"peak_bytes_in_use {stats.get('peak_bytes_in_use')}")


def torch_case(argv: list[str]) -> None:
    """The lecture's gpt.py on the GPU: its hyperparameters (`--config=lecture`'s), its loop and its evaluation."""
    import torch

    from jaxgpt.torch_reference.lecture import train_lecture

    parser = argparse.ArgumentParser()
    parser.add_argument("--max_iters", type=int, default=5000)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    stamped(f"on {torch.cuda.get_device_name()}")
    train_lecture(Path(os.environ["JAXGPT_DATA"]).read_text(encoding="utf-8"), max_iters=args.max_iters,
                  device="cuda", autocast_dtype=torch.bfloat16 if args.precision == "bfloat16" else None,
                  on_eval=lambda it, losses: stamped(f"step {it}: train loss {losses['train']:.4f}, "
                                                     f"val loss {losses['val']:.4f}"))
    torch.cuda.synchronize()
    stamped(f"peak_bytes_in_use {torch.cuda.max_memory_allocated()}")


def compiled_case(argv: list[str]) -> None:
    """`--compile_for=h200-1`'s check, compiled for this process's own GPU (the deviceless topology replaced by
    jax.devices(): same programs, same code, a real device's compiler)."""
    import jax

    from jaxgpt.cli import parse_train_command
    from jaxgpt.run import compile_check
    from jaxgpt.system.targets import find_target

    compile_check.target_devices = lambda target: jax.devices()[:target.devices]
    config, _ = parse_train_command(argv)
    report = compile_check.check_train(config, find_target("h200-1"), log=stamped)
    print(report.format(), flush=True)


PEAK = re.compile(r"peak_bytes_in_use (\d+)")


def drive(out: Path, only: list[int] | None, timeout: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results = {"host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cases": []}
    try:
        results["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
    except OSError as err:
        results["nvidia_smi"] = str(err)
    for index in only or range(len(CASES)):  # in the order given; a case may run twice (cold, then warm)
        kind, argv, env = CASES[index]
        flags = list(argv)
        if kind == "jaxgpt":
            flags += [f"--out_dir={tempfile.gettempdir()}/gpu_run/run{index}", "--overwrite"]  # checkpoints: not in out
        command = [sys.executable, __file__, f"--case={kind}", "--", *flags]
        began = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **env})
            log, rc = done.stdout + done.stderr[-4000:], done.returncode
        except subprocess.TimeoutExpired as err:
            partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout or ""
            log, rc = f"{partial}\ntimed out after {timeout} s", "timeout"
        wall = time.perf_counter() - began
        peak = PEAK.findall(log)
        case = {"index": index, "kind": kind, "flags": argv, "env": env, "rc": rc, "wall_s": round(wall, 2),
                "peak_bytes": int(peak[-1]) if peak else None, "log": log}
        results["cases"].append(case)
        shown = [line for line in log.splitlines() if "val loss" in line][-3:] if rc == 0 else log.splitlines()[-6:]
        memory = f"peak {case['peak_bytes'] / 2**30:.3f} GiB" if peak else "peak not read"
        described = " ".join([kind, *argv, *(f"{name}={value}" for name, value in env.items())])
        print(f"case {index} {described}: rc={rc}, wall {wall:.1f} s, {memory}", *shown, sep="\n  ", flush=True)
        (out / "gpu_run.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("jaxgpt", "torch", "compiled"))
    parser.add_argument("--out", default="gpu_run")
    parser.add_argument("--only", type=int, nargs="*", help="case numbers to run, in this order (default: all)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per case")
    args, rest = parser.parse_known_args()
    rest = [arg for arg in rest if arg != "--"]
    if args.case:
        {"jaxgpt": jaxgpt_case, "torch": torch_case, "compiled": compiled_case}[args.case](rest)
    else:
        drive(Path(args.out), args.only, args.timeout)


if __name__ == "__main__":
    main()
