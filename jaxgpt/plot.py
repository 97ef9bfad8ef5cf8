"""`python -m jaxgpt.plot RUN_DIR [OTHER_RUN ...] [--output FILE] [--metric loss|bpb]`: draw and overlay runs'
loss curves."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxgpt.cli import ArgumentParser, run_cli
from jaxgpt.run.plot import plot_runs
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m jaxgpt.plot", description="Draw and overlay runs' loss curves.",
                            formatter_class=argparse.HelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--output", help="PNG to write (default: the first run's loss plot)")
    parser.add_argument("--metric", choices=("loss", "bpb"), default="loss",
                        help="loss: train and val loss; bpb: val bits per byte, comparable across tokenizers")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    output = args.output or RunDir(args.run_dirs[0]).plot_file
    try:
        path = plot_runs(args.run_dirs, output, args.metric)
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'jaxgpt[plot]'") from None
    except OSError as err:
        raise UsageError(f"cannot write {output}: {err.strerror}; pass --output=FILE in a writable place") from None
    print(f"wrote {Path(path)}")


def entry_point() -> None:
    """The `jaxgpt-plot` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
