"""Loss curves of one or more runs (the command line is `python -m jaxgpt.plot`, jaxgpt/plot.py)."""

from __future__ import annotations

import os
from pathlib import Path

from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError


def plot_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike, metric: str = "loss") -> Path:
    """Against step, for each run in one PNG: with metric "loss", train (dashed) and val (solid) loss; with "bpb",
    val bits per UTF-8 byte, which compares runs with different tokenizers. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(run_dir).name or str(run_dir), RunDir(run_dir).read_metrics()) for run_dir in run_dirs]
    if metric == "bpb":
        for label, records in runs:
            if any(r.get("val_bpb") is None for r in records):
                raise UsageError(f"run {label} has no val_bpb in its metrics (trained by an older jaxgpt); "
                                 "plot it with --metric=loss")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, records in runs:
        steps = [r["step"] for r in records]
        if metric == "bpb":
            ax.plot(steps, [r["val_bpb"] for r in records], label=f"{label} val")
            continue
        (line,) = ax.plot(steps, [r["val_loss"] for r in records], label=f"{label} val")
        ax.plot(steps, [r["train_loss"] for r in records], "--", color=line.get_color(), label=f"{label} train")
    ylabel = "bits per byte" if metric == "bpb" else "cross-entropy loss"
    ax.set(xlabel="step", ylabel=ylabel, title="jaxgpt training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return Path(output)


def write_loss_plot(run_dir: RunDir) -> Path | None:
    """The run's loss plot, or None when matplotlib (the `plot` extra) is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    return plot_runs([run_dir.path], run_dir.plot_file)
