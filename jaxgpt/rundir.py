"""The run directory: the one place that knows its layout and the rules for starting, resuming and replacing it.

    OUT_DIR/
      config.json              the run's TrainConfig (vocab_size set from the data)
      tokenizer.json           the character vocabulary
      metrics.jsonl            one JSON line per evaluation
      checkpoints/STEP/        the latest `keep_checkpoints` training checkpoints: params, opt_state, meta
      checkpoints_best/STEP/   the checkpoint with the lowest val loss so far: params, meta
      unusable_checkpoints/    checkpoints found damaged on resume, moved out of the way
      params/                  exported weights only (e.g. converted models)
      loss.png                 loss curves

A checkpoint's `meta` item (JSON) holds its step, seed, config, the sha256 of the training text and the
last val loss (jaxgpt.checkpoint reads and writes them with orbax).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from jaxgpt.config import TrainConfig
from jaxgpt.data import CharTokenizer
from jaxgpt.errors import UsageError

CONFIG, TOKENIZER, METRICS, PLOT = "config.json", "tokenizer.json", "metrics.jsonl", "loss.png"
CHECKPOINTS, BEST, UNUSABLE, PARAMS = "checkpoints", "checkpoints_best", "unusable_checkpoints", "params"
ENTRIES = (CONFIG, TOKENIZER, METRICS, PLOT, CHECKPOINTS, BEST, UNUSABLE, PARAMS)  # what `--overwrite` removes


class RunDir:
    """The files of one run directory: paths, the start/resume/overwrite rules, config, tokenizer, metrics."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()
        self.config_file, self.tokenizer_file = self.path / CONFIG, self.path / TOKENIZER
        self.metrics_file, self.plot_file = self.path / METRICS, self.path / PLOT
        self.checkpoints, self.best, self.unusable = self.path / CHECKPOINTS, self.path / BEST, self.path / UNUSABLE
        self.params = self.path / PARAMS

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- starting a run ---------------------------------------------------------------------------------------

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """Before any work: resumable (`resume`), empty, or to be replaced (`overwrite`); UsageError if not."""
        where = repr(str(self.path))
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"out_dir {where} is a file; choose a directory")
        if resume:
            if not self.checkpoints.is_dir():
                raise UsageError(f"nothing to resume in {where}: it has no {CHECKPOINTS}/; start without --resume")
        elif self.path.exists() and any(self.path.iterdir()) and not overwrite:
            raise UsageError(f"out_dir {where} is not empty; choose another --out_dir, pass --resume to continue "
                             "its run or --overwrite to replace it")

    def create(self, overwrite: bool) -> None:
        """Make the directory (removing an earlier run's files with `overwrite`) and check that it is writable."""
        if overwrite and self.path.is_dir():
            self.remove_run()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as err:
            raise UsageError(f"cannot write to out_dir {str(self.path)!r}: {err.strerror}") from None

    def remove_run(self) -> None:
        """Delete what a run wrote (ENTRIES), leaving any other file in the directory alone."""
        for name in ENTRIES:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def check_free_space(self, nbytes: int, copies: int) -> None:
        """UsageError when the disk cannot hold `copies` checkpoints of `nbytes` each."""
        need, free = copies * nbytes, shutil.disk_usage(self.path).free
        if free < need:
            raise UsageError(f"out_dir {str(self.path)!r} has {free / 1e6:.1f} MB free but {copies} checkpoints need "
                             f"about {need / 1e6:.1f} MB; free some space, lower --keep_checkpoints or choose "
                             "another --out_dir")

    # -- reading a run -----------------------------------------------------------------------------------------

    def check_readable(self) -> None:
        """UsageError unless this is a directory holding a run's config and tokenizer."""
        if not self.path.exists():
            raise UsageError(f"run directory {str(self.path)!r} does not exist")
        if not self.path.is_dir():
            raise UsageError(f"run directory {str(self.path)!r} is not a directory")
        for path in (self.config_file, self.tokenizer_file):
            if not path.is_file():
                raise UsageError(f"{self.path} is not a jaxgpt run directory: {path.name} is missing")

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() or self.best.is_dir()

    def has_params(self) -> bool:
        return self.params.is_dir()

    # -- config and tokenizer -----------------------------------------------------------------------------------

    def write_config(self, config: TrainConfig) -> None:
        _write_atomically(self.config_file, config.as_saved().to_json())

    def read_config(self) -> TrainConfig:
        return TrainConfig.from_json(self.config_file.read_text(encoding="utf-8"), str(self.config_file))

    def write_tokenizer(self, tokenizer: CharTokenizer) -> None:
        _write_atomically(self.tokenizer_file, tokenizer.to_json())

    def read_tokenizer(self) -> CharTokenizer:
        try:
            return CharTokenizer.from_json(self.tokenizer_file.read_text(encoding="utf-8"))
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{self.tokenizer_file} is not a valid tokenizer file ({type(err).__name__}: {err})"
                             ) from None

    # -- metrics ------------------------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict]:
        """The evaluation records, oldest first."""
        if not self.metrics_file.is_file():
            raise UsageError(f"{self.path} has no {METRICS}; is it a jaxgpt run directory?")
        lines = self.metrics_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_metrics(self, records: list[dict]) -> None:
        """Replace the metrics with `records`, atomically."""
        _write_atomically(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory: the old or the new file, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
