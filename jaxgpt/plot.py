"""Loss curves of one or more runs (the command line is `python -m jaxgpt.plot`, jaxgpt/cli/plot.py)."""

from __future__ import annotations

import os
from pathlib import Path

from jaxgpt.rundir import RunDir


def plot_runs(run_dirs: list[str | os.PathLike], output: str | os.PathLike) -> Path:
    """Train (dashed) and val (solid) loss against step for each run, in one PNG. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run_dir in run_dirs:
        records = RunDir(run_dir).read_metrics()
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


def write_loss_plot(run_dir: RunDir) -> Path | None:
    """The run's loss plot, or None when matplotlib (the `plot` extra) is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None
    return plot_runs([run_dir.path], run_dir.plot_file)


if __name__ == "__main__":  # `python -m jaxgpt.plot`: the command line lives in jaxgpt/cli/plot.py
    from jaxgpt.cli.plot import entry_point

    entry_point()
