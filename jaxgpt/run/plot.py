"""Loss curves of one or more runs (the command line is `python -m jaxgpt.plot`, jaxgpt/plot.py)."""

from __future__ import annotations

import os
from pathlib import Path

from jaxgpt.store.rundir import PLOT, RunDir
from jaxgpt.system.errors import UsageError


def plot_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike, metric: str = "loss") -> Path:
    """Against step, for each run in one PNG: with metric "loss", train (dashed) and val (solid) loss; with "bpb",
    val bits per UTF-8 byte, which compares runs with different tokenizers. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureCanvasBase

    output = Path(output)
    if output.is_dir():
        raise UsageError(f"--output {str(output)!r} is a directory; give a file in it, such as {output / PLOT}")
    if output.suffix.lstrip(".").lower() not in FigureCanvasBase.get_supported_filetypes():
        raise UsageError(f"--output {str(output)!r} must end in an image type such as .png, .svg or .pdf")
    runs = [(Path(run_dir).name or str(run_dir), RunDir(run_dir).read_metrics()) for run_dir in run_dirs]
    for label, records in runs:
        if not records:
            raise UsageError(f"run {label} has no evaluations in its metrics yet: nothing to plot")
    if metric == "bpb":
        for label, records in runs:
            if any(r.get("val_bpb") is None for r in records):
                raise UsageError(f"run {label} has no val_bpb in its metrics (trained by an older jaxgpt); "
                                 "plot it with --metric=loss")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, records in runs:
        steps = [r["step"] for r in records]
        marker = "o" if len(records) == 1 else None  # one evaluation is a point, not a line
        if metric == "bpb":
            ax.plot(steps, [r["val_bpb"] for r in records], marker=marker, label=f"{label} val")
            continue
        (line,) = ax.plot(steps, [r["val_loss"] for r in records], marker=marker, label=f"{label} val")
        ax.plot(steps, [r["train_loss"] for r in records], "--", marker=marker, color=line.get_color(),
                label=f"{label} train")
    ylabel = "bits per byte" if metric == "bpb" else "cross-entropy loss"
    ax.set(xlabel="step", ylabel=ylabel, title="jaxgpt training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def write_loss_plot(run_dir: RunDir) -> str | None:
    """Write the run's loss plot; returns why not when it cannot: matplotlib (the `plot` extra) is not installed,
    or the run has no evaluation yet."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed: no loss plot (pip install 'jaxgpt[plot]')"
    if not run_dir.read_metrics():
        return "no evaluation was made: no loss plot"
    plot_runs([run_dir.path], run_dir.plot_file)
    return None
