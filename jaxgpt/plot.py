"""Loss curves: `python -m jaxgpt.plot OUT_DIR [OTHER_RUN ...] [--output FILE]` draws and overlays runs."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from jaxgpt.errors import UsageError, run_cli

PLOT_NAME = "loss.png"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"{run_dir} has no metrics.jsonl; is it a jaxgpt run directory?")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike) -> Path:
    """Train (dashed) and val (solid) loss against step for each run, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        steps = [r["step"] for r in records]
        label = Path(run_dir).name or str(run_dir)
        (line,) = ax.plot(steps, [r["val_loss"] for r in records], label=f"{label} val")
        ax.plot(steps, [r["train_loss"] for r in records], "--", color=line.get_color(), label=f"{label} train")
    ax.set(xlabel="step", ylabel="cross-entropy loss", title="jaxgpt training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return Path(output)


def write_loss_plot(run_dir: str | os.PathLike) -> Path | None:
    """RUN_DIR/loss.png, or None when matplotlib (the `plot` extra) is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    return plot_runs([run_dir], Path(run_dir) / PLOT_NAME)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jaxgpt.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories holding metrics.jsonl")
    parser.add_argument("--output", help="PNG to write (default: RUN_DIR/loss.png of the first run)")
    args = parser.parse_args(argv)
    output = args.output or Path(args.run_dirs[0]) / PLOT_NAME
    try:
        path = plot_runs(args.run_dirs, output)
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'jaxgpt[plot]'") from None
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
