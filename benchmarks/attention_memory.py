"""How a train step's temporaries grow with the context, with and without the accelerators' fused attention.

    JAX_PLATFORMS=cpu python benchmarks/attention_memory.py [--config=lecture] [--block_sizes=256,1024,2048]

The lecture's model and recipe (dropout off, which the fused kernels do not have) at block_size 256, 1024 and
2048, batch 8, compiled for tpu-v5e-1 (--attention=xla against splash) and h100-1 (xla against cudnn): the train
step's temporaries per device from the compiled program (memory_analysis). Compiled, not run.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_platforms", "cpu")

from jaxgpt.cli import parse_train_args  # noqa: E402
from jaxgpt.run.compile_check import check_train, format_bytes  # noqa: E402
from jaxgpt.system.targets import find_target  # noqa: E402

CASES = [("tpu-v5e-1", "splash"), ("h100-1", "cudnn")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="lecture")
    parser.add_argument("--block_sizes", default="256,1024,2048", help="comma-separated multiples of 128")
    args = parser.parse_args()
    print("| target | block_size | temporaries, xla | temporaries, fused | fused kernel | train step peak, xla "
          "| peak, fused |")
    print("|---|---|---|---|---|---|---|")
    for target, fused in CASES:
        for block_size in map(int, args.block_sizes.split(",")):
            reports = {}
            for attention in ("xla", fused):
                config = parse_train_args([f"--config={args.config}", "--dropout=0", "--batch_size=8",
                                           "--sample_chars=0", f"--block_size={block_size}",
                                           f"--attention={attention}"])
                report = check_train(config, find_target(target), log=lambda _: None)
                reports[attention] = report.train_step
            plain, kernel = reports["xla"], reports[fused]
            print(f"| {target} | {block_size} | {format_bytes(plain.temporaries)} | "
                  f"{format_bytes(kernel.temporaries)} | {', '.join(kernel.kernels)} | "
                  f"{format_bytes(plain.peak_bytes)} | {format_bytes(kernel.peak_bytes)} |", flush=True)


if __name__ == "__main__":
    main()
