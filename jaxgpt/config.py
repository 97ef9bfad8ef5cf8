"""Training configuration: one dataclass, loaded from `configs/NAME.py` or any `path/to/file.py`.

A config file defines a module-level `config = TrainConfig(...)`. The files in the repository's
`configs/` folder ship inside the package as `jaxgpt.configs`, so names resolve from any install.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import importlib.util
import json
import math
import os
import typing
from pathlib import Path
from typing import Any, Literal

from jaxgpt.errors import UsageError
from jaxgpt.model import GPTConfig

ModelType = Literal["gpt", "bigram"]
LRSchedule = Literal["constant", "cosine"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs besides the data; defaults are the lecture's gpt.py."""

    model: GPTConfig = GPTConfig()
    model_type: ModelType = "gpt"
    # data and output
    data_path: str | None = None  # None: $JAXGPT_DATA, the cache, or a download
    out_dir: str = "out"
    overwrite: bool = False  # allow writing into a non-empty out_dir
    # training loop (the lecture's names)
    batch_size: int = 64
    max_iters: int = 5000
    eval_interval: int = 500
    eval_iters: int = 200
    seed: int = 1337
    steps_per_call: int = 1  # optimizer steps per compiled call (lax.scan), at most; see train.steps_per_call
    # optimizer: torch.optim.AdamW's defaults
    learning_rate: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01
    decay_all_params: bool = True  # False: no weight decay on biases, LayerNorm and embeddings
    lr_schedule: LRSchedule = "constant"
    warmup_iters: int = 0  # linear warmup from 0, with either schedule
    min_lr: float = 0.0  # where cosine decay ends
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping
    # checkpoints (see jaxgpt.checkpoint): every interval, at the end, on SIGINT/SIGTERM, and the best val loss
    checkpoint_interval: int = 500
    keep_checkpoints: int = 3  # how many of the latest checkpoints to keep
    resume: bool = False  # continue from the latest usable checkpoint in out_dir
    # reporting
    sample_chars: int = 500  # length of the sample printed at the end
    progress: bool = True  # progress bar between evaluations
    peak_flops: float | None = None  # FLOP/s of all devices together, for MFU; None: look up jaxgpt.mfu.PEAK_FLOPS
    # scaling out (jaxgpt/sharding.py): data parallel over all devices; fsdp also shards params and optimizer state
    fsdp: int = 1  # devices that share one copy of the parameters; must divide the device count
    multihost: bool = False  # join other processes with jax.distributed.initialize (TPU pods, clusters)

    def __post_init__(self) -> None:
        _check_types(self)
        positive = ("batch_size", "eval_interval", "eval_iters", "learning_rate", "eps", "fsdp", "checkpoint_interval",
                    "keep_checkpoints", "steps_per_call")
        non_negative = ("max_iters", "weight_decay", "warmup_iters", "min_lr", "grad_clip", "sample_chars")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must not be negative, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.model_type not in ("gpt", "bigram"):
            raise UsageError(f"model_type must be 'gpt' or 'bigram', got {self.model_type!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UsageError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.resume and self.overwrite:
            raise UsageError("--resume continues the run in out_dir and --overwrite replaces it; choose one")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise UsageError(f"peak_flops must be positive, got {self.peak_flops}")

    @property
    def block_size(self) -> int:
        return self.model.block_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        try:
            values = dict(values)
            model = GPTConfig(**values.pop("model"))
            return cls(model=model, **values)
        except (TypeError, KeyError, AttributeError) as err:  # unknown or missing fields, a wrong type
            raise UsageError(f"config fields do not match this jaxgpt ({type(err).__name__}: {err})") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainConfig:
        """A config saved by `save` (a run's config.json)."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except ValueError as err:  # bad JSON, or from_dict's UsageError
            raise UsageError(f"{path} is not a valid jaxgpt config: {err}") from None


def _check_types(config: TrainConfig) -> None:
    """Wrong types (from a config file) and non-finite numbers are usage errors, not later tracebacks."""
    kinds = {int: "an int", float: "a number", bool: "true or false", str: "a string"}
    for name, tp in typing.get_type_hints(TrainConfig).items():
        value = getattr(config, name)
        optional = type(None) in typing.get_args(tp)
        tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if optional else tp
        if value is None and optional or tp not in kinds:
            continue
        allowed = (int, float) if tp is float else tp
        if not isinstance(value, allowed) or (tp is not bool and isinstance(value, bool)):
            raise UsageError(f"{name} must be {kinds[tp]}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{name} must be a finite number, got {value}")
    if not isinstance(config.model, GPTConfig):
        raise UsageError(f"model must be a GPTConfig, got {config.model!r}")


def available_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    files = importlib.resources.files("jaxgpt.configs").iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def load_config(name_or_path: str) -> TrainConfig:
    """A config by name (`small`, from `configs/`), by path (`path/to/file.py`) or a run's `config.json`."""
    if name_or_path.endswith(".json"):
        if not Path(name_or_path).is_file():
            raise UsageError(f"config file {name_or_path!r} does not exist")
        return TrainConfig.load(name_or_path)
    if name_or_path.endswith(".py") or os.sep in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UsageError(f"config file {name_or_path!r} does not exist")
        spec = importlib.util.spec_from_file_location(f"jaxgpt_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except UsageError:
            raise
        except Exception as err:  # the user's file: a syntax error, a failing import, a wrong value ...
            raise UsageError(f"config file {name_or_path!r} failed: {type(err).__name__}: {err}") from None
    else:
        names = available_configs()
        if name_or_path not in names:
            raise UsageError(f"unknown config {name_or_path!r}; choose one of {', '.join(names)} or give a .py path")
        module = importlib.import_module(f"jaxgpt.configs.{name_or_path}")
    config = getattr(module, "config", None)
    if not isinstance(config, TrainConfig):
        raise UsageError(f"config {name_or_path!r} must define `config = TrainConfig(...)`")
    return config
