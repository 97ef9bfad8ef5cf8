"""Experiment trackers (`--log_to=tensorboard,wandb`): every evaluation's record, the numbers metrics.jsonl holds,
and the config, sent from process 0 to TensorBoard event files and/or Weights & Biases.

A tracker never stops or loses a run: one that fails to start or to log (a full disk, a lost network) is reported
once and dropped, and training goes on; metrics.jsonl stays the record. A tracker's missing library is a usage
error before the run starts, naming the install command.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import uuid
from collections.abc import Callable
from typing import Protocol

from jaxgpt.core.config import TrainConfig
from jaxgpt.store.rundir import RunDir
from jaxgpt.system.errors import UsageError

LIBRARIES = {"tensorboard": "tensorboardX", "wandb": "wandb"}  # tracker -> the module it writes with
WANDB_PROJECT = "jaxgpt"  # unless WANDB_PROJECT says otherwise


class Tracker(Protocol):
    name: str

    def log(self, record: dict) -> None: ...

    def close(self) -> None: ...


def chosen(config: TrainConfig) -> list[str]:
    """The trackers `config.log_to` names, in order (the config's rule has checked the names)."""
    return [name for name in config.log_to.split(",") if name]


def check_installed(config: TrainConfig) -> None:
    """UsageError naming the install command when a chosen tracker's library is missing."""
    for name in chosen(config):
        if importlib.util.find_spec(LIBRARIES[name]) is None:
            raise UsageError(f"--log_to={name} needs the {LIBRARIES[name]} package: pip install 'jaxgpt[track]'")


class TensorBoard:
    """Event files in the run directory's tensorboard/ (written by tensorboardX: no TensorFlow). A resumed run
    appends a new event file; TensorBoard shows the later value where steps repeat."""

    name = "tensorboard"

    def __init__(self, run_dir: RunDir, config: TrainConfig):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir=str(run_dir.tensorboard))
        self._writer.add_text("config", f"```\n{config.as_saved().to_json()}\n```", 0)
        self._writer.flush()

    def log(self, record: dict) -> None:
        for key, value in numbers(record).items():
            self._writer.add_scalar(key, value, record["step"])
        self._writer.flush()  # an evaluation is rare: each one on disk at once

    def close(self) -> None:
        self._writer.close()


class WeightsAndBiases:
    """A W&B run whose files go in the run directory's wandb/; its id is kept in the run directory so that
    `--resume` continues the same W&B run. Offline (files only, `wandb sync` uploads them) unless you have logged
    in (`wandb login` or WANDB_API_KEY); WANDB_MODE and WANDB_PROJECT win."""

    name = "wandb"

    def __init__(self, run_dir: RunDir, config: TrainConfig):
        import wandb

        run_id = run_dir.read_wandb_id() or uuid.uuid4().hex[:12]
        run_dir.wandb.mkdir(exist_ok=True)
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), id=run_id, resume="allow",
                               dir=str(run_dir.path), name=run_dir.path.name, mode=wandb_mode(),
                               config=json.loads(config.as_saved().to_json()))
        run_dir.write_wandb_id(run_id)

    def log(self, record: dict) -> None:
        self._run.log(numbers(record), step=record["step"])

    def close(self) -> None:
        self._run.finish()


def wandb_mode() -> str:
    """WANDB_MODE if set; else "online" where an API key is set or stored by `wandb login`, else "offline"."""
    if mode := os.environ.get("WANDB_MODE"):
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return "online" if netrc.netrc(os.environ.get("NETRC")).authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


def numbers(record: dict) -> dict[str, float]:
    """The record's numbers but the step (None, e.g. no throughput yet, is left out)."""
    return {key: value for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


KINDS: dict[str, Callable[[RunDir, TrainConfig], Tracker]] = {"tensorboard": TensorBoard, "wandb": WeightsAndBiases}


class Trackers:
    """The run's trackers, each guarded: the first failure of one is reported with `warn` and drops it."""

    def __init__(self, run_dir: RunDir, names: list[str], config: TrainConfig, warn: Callable[[str], None]):
        self._warn, self._active = warn, []
        for name in names:
            try:
                self._active.append(KINDS[name](run_dir, config))
            except Exception as err:  # noqa: BLE001 - whatever a tracker raises, training goes on without it
                self._drop(name, "start", err)

    def log(self, record: dict) -> None:
        for tracker in list(self._active):
            try:
                tracker.log(record)
            except Exception as err:  # noqa: BLE001 - see __init__
                self._active.remove(tracker)
                self._drop(tracker.name, "log", err)

    def close(self) -> None:
        for tracker in self._active:
            try:
                tracker.close()
            except Exception as err:  # noqa: BLE001 - see __init__
                self._drop(tracker.name, "close", err)
        self._active = []

    def _drop(self, name: str, what: str, err: Exception) -> None:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        self._warn(f"warning: the {name} tracker failed to {what} ({reason}); training goes on without it "
                   "(metrics.jsonl has every evaluation)")
