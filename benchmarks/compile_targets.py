"""Compile named configs for TPU and GPU targets on this machine (no accelerator) and tabulate the reports.

    JAX_PLATFORMS=cpu python benchmarks/compile_targets.py --data_prepared=DIR [--out=compile_targets.json]
    JAX_PLATFORMS=cpu python benchmarks/compile_targets.py --flags="--config=tiny" --targets=tpu-v5e-1,h100-1

Each row is `python -m jaxgpt.train --config=NAME --compile_for=TARGET [flags]`, in this process
(jaxgpt.run.compile_check.check_train): per device the train step's peak memory and the largest program's, the
params and optimizer state, FLOPs per step, the step-time lower bound, max_iters at the bound and at 40% MFU (or the
bound where longer).
Compiled, not run. `--data_prepared` is a prepared dataset (python -m jaxgpt.prepare) standing in for the GPT-2
tokens of finetune_shakespeare: its programs depend on the data only through its form (memory-mapped tokens,
gathered on the host) and on the vocabulary, which is the weights'.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

jax.config.update("jax_platforms", "cpu")

from jaxgpt.cli import parse_train_args  # noqa: E402
from jaxgpt.run.compile_check import ASSUMED_MFU, check_train, format_duration  # noqa: E402
from jaxgpt.system.errors import JaxgptError  # noqa: E402
from jaxgpt.system.targets import find_target  # noqa: E402

TARGETS = ["tpu-v5e-1", "tpu-v6e-1", "tpu-v4-8", "h100-1", "h100-8"]


def rows(data_prepared: str) -> list[tuple[list[str], list[str]]]:
    """(flags, targets) per config, as the issue's results table asks, then FSDP and multi-slice rows."""
    finetune = ["--config=finetune_shakespeare", "--block_size=1024", f"--data_path={data_prepared}"]
    return [
        (["--config=lecture"], TARGETS),
        (["--config=shakespeare_char"], TARGETS),
        (["--config=speedrun"], TARGETS),
        (finetune, TARGETS),
        (finetune + ["--batch_size=8"], ["tpu-v4-8", "h100-8"]),
        (["--config=lecture", "--fsdp=8"], ["tpu-v5e-8", "h100-8"]),
        (["--config=lecture"], ["tpu-v5e-8"]),
        (["--config=lecture", "--fsdp=8"], ["tpu-v5e-8x2", "h100-8x2"]),
    ]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_prepared", help="a prepared dataset for the finetune rows (required for the table)")
    parser.add_argument("--flags", help="one row's flags instead of the table's rows, e.g. '--config=tiny'")
    parser.add_argument("--targets", default=",".join(TARGETS), help="--flags' targets, comma-separated")
    parser.add_argument("--out", default="compile_targets.json")
    args = parser.parse_args()
    if args.flags:
        table = [(args.flags.split(), args.targets.split(","))]
    elif args.data_prepared:
        table = rows(args.data_prepared)
    else:
        parser.error("the table's finetune rows need --data_prepared (or give one row's --flags)")
    results = []
    print("| flags | target | compiles | train step peak / device (GiB) | largest program (GiB) | usable (GiB) "
          "| params + opt state / device (GiB) | GFLOP per step per device | step >= | max_iters >= "
          f"| max_iters at {ASSUMED_MFU:.0%} MFU or the bound | compile (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for flags, targets in table:
        config = parse_train_args(flags)
        shown = " ".join(flag for flag in flags if not flag.startswith("--data_path"))
        for name in targets:
            target = find_target(name)
            started = time.perf_counter()
            try:
                report = check_train(config, target, log=lambda _: None)
            except JaxgptError as err:
                print(f"| `{shown}` | {name} | no: {err} | | | | | | | | | |", flush=True)
                results.append({"flags": shown, "target": name, "error": str(err)})
                continue
            seconds = time.perf_counter() - started
            step, bound = report.train_step, report.step_seconds_bound()
            largest = max(p.peak_bytes for p in report.programs)
            fits = "yes" if report.fit_problem() is None else "yes, does not fit"
            print(f"| `{shown}` | {name} | {fits} | {gib(step.peak_bytes)} | {gib(largest)} | "
                  f"{gib(report.usable_bytes)} | {gib(report.params_bytes + report.optimizer_bytes)} | "
                  f"{report.flops_per_step_per_device() / 1e9:,.1f}{'' if step.flops is not None else ' (count)'} | "
                  f"{format_duration(bound)} | {format_duration(bound * report.steps)} | "
                  f"{format_duration(report.seconds_at_mfu())} | "
                  f"{seconds:.0f} |", flush=True)
            results.append({"flags": shown, "target": name, "fits": report.fit_problem() is None,
                            "programs": [p.__dict__ for p in report.programs],
                            "params_bytes": report.params_bytes, "optimizer_bytes": report.optimizer_bytes,
                            "flops_per_step_per_device": report.flops_per_step_per_device(),
                            "model_flops_per_step": report.model_flops_per_step, "step_seconds_bound": bound,
                            "seconds_at_mfu": report.seconds_at_mfu(), "seconds": seconds})
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
