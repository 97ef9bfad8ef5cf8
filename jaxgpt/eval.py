"""`python -m jaxgpt.eval SOURCE --data_path=PATH`: loss, perplexity and bits per byte of any model over a whole
split (see jaxgpt.eval)."""

from __future__ import annotations

import argparse
import sys

from jaxgpt.cli import COMPILE_FOR_HELP, ArgumentParser, compile_only, run_cli
from jaxgpt.run.compile_check import check_eval
from jaxgpt.run.evaluate import evaluate
from jaxgpt.system import compile_cache
from jaxgpt.system.errors import JaxgptError
from jaxgpt.system.targets import find_target
from jaxgpt.weights.pretrained import DTYPES, HUB_MODELS


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m jaxgpt.eval", formatter_class=argparse.HelpFormatter,
                            description="Loss, perplexity and bits per byte of a model over a whole split, in "
                                        "consecutive windows (deterministic).")
    parser.add_argument("source", metavar="SOURCE", help=f"the weights: {', '.join(HUB_MODELS)} (Hugging Face hub), a "
                        "run directory, a save_pretrained directory or a .pt file")
    parser.add_argument("--data_path", metavar="PATH", help="a text file (character tokens) or a dataset directory "
                        "from python -m jaxgpt.prepare (default: $JAXGPT_DATA, the cache or a download)")
    parser.add_argument("--split", choices=["train", "val"], default="val", help="default: %(default)s")
    parser.add_argument("--batch_size", type=int, default=8, metavar="N", help="windows per batch (default: "
                        "%(default)s)")
    parser.add_argument("--block_size", type=int, metavar="T", help="window length, at most the model's context "
                        "(default: the model's)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="the weights in memory: bfloat16 halves it (default: %(default)s)")
    parser.add_argument("--compile_for", metavar="TARGET", help=COMPILE_FOR_HELP)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.compile_for:
        return compile_eval(args)
    compile_cache.enable_default()
    result = evaluate(args.source, args.data_path, args.split, args.batch_size, args.block_size, args.dtype)
    print(f"{args.source} on {args.data_path or 'the data'} ({args.split}): loss {result.loss:.4f}, perplexity "
          f"{result.perplexity:.2f}, {result.bpb:.4f} bits per byte ({result.tokens:,} tokens in "
          f"{result.windows:,} windows of {result.block_size})")


def compile_eval(args: argparse.Namespace) -> None:
    """--compile_for: the scoring program compiled for the target, here; exit 1 if it does not fit."""
    target = find_target(args.compile_for)
    compile_only()
    report = check_eval(args.source, target, data_path=args.data_path, split=args.split,
                        batch_size=args.batch_size, block_size=args.block_size, dtype=args.dtype)
    print(report.format())
    if problem := report.fit_problem():
        raise JaxgptError(problem)


def entry_point() -> None:
    """The `jaxgpt-eval` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
