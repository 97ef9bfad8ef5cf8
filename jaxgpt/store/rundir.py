"""The run directory: the one place that knows its layout and the rules for starting, resuming and replacing it.

    OUT_DIR/
      config.json              the run's TrainConfig (vocab_size set from the data)
      tokenizer.json           the tokenizer (jaxgpt.data.tokenizers: characters, a BPE or GPT-2's encoding)
      metrics.jsonl            one JSON line per evaluation
      checkpoints/STEP/        the latest `keep_checkpoints` training checkpoints: params, opt_state, meta
      checkpoints_best/STEP/   the checkpoint with the lowest val loss so far: params, meta
      unusable_checkpoints/    checkpoints found damaged on resume, moved out of the way
      params/                  exported weights only (e.g. converted models)
      loss.png                 loss curves
      tensorboard/             TensorBoard event files (--log_to=tensorboard)
      wandb/, wandb_id.txt     Weights & Biases' local files and the run's id, which --resume continues
      profile/                 a jax.profiler trace of the --profile window
      .jaxgpt.lock, .jaxgpt.owner   while a process writes the run: its lock (see `RunDir.acquire`)

A checkpoint's `meta` item (JSON) holds its step, seed, config, the sha256 of the training text and the
last val loss (jaxgpt.store.checkpoint reads and writes them with orbax).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import filelock

from jaxgpt.core.config import TrainConfig
from jaxgpt.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.system.files import write_text_atomically

CONFIG, TOKENIZER, METRICS, PLOT = "config.json", TOKENIZER_FILE, "metrics.jsonl", "loss.png"
CHECKPOINTS, BEST, UNUSABLE, PARAMS = "checkpoints", "checkpoints_best", "unusable_checkpoints", "params"
TENSORBOARD, WANDB, WANDB_ID, PROFILE = "tensorboard", "wandb", "wandb_id.txt", "profile"
INSPECT = "inspect.html"
ENTRIES = (CONFIG, TOKENIZER, METRICS, PLOT, CHECKPOINTS, BEST, UNUSABLE, PARAMS, TENSORBOARD, WANDB, WANDB_ID,
           PROFILE, INSPECT)  # what `--overwrite` removes
LOCK, OWNER = ".jaxgpt.lock", ".jaxgpt.owner"  # not part of a run: an out_dir holding only these is empty


class RunDir:
    """The files of one run directory: paths, the start/resume/overwrite rules, config, tokenizer, metrics."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()
        self.config_file, self.tokenizer_file = self.path / CONFIG, self.path / TOKENIZER
        self.metrics_file, self.plot_file = self.path / METRICS, self.path / PLOT
        self.checkpoints, self.best, self.unusable = self.path / CHECKPOINTS, self.path / BEST, self.path / UNUSABLE
        self.params = self.path / PARAMS
        self.tensorboard, self.wandb, self.profile = self.path / TENSORBOARD, self.path / WANDB, self.path / PROFILE
        self.wandb_id_file, self.inspect_file = self.path / WANDB_ID, self.path / INSPECT
        self._lock: filelock.BaseFileLock | None = None
        self._created = False  # by acquire(): removed again if nothing was written

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- starting a run ---------------------------------------------------------------------------------------

    def acquire(self, log: Callable[[str], None]) -> None:
        """Become the directory's only writer (creating it if needed), or raise UsageError naming the process that
        is. The lock is the kernel's (flock), so it dies with its process; a lock left by a process that was
        killed is taken over, with a message. Readers (`load`, `sample`, `plot`) take no lock."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"out_dir {str(self.path)!r} is a file; choose a directory")
        try:
            self.path.mkdir(parents=True)
            self._created = True
        except FileExistsError:
            pass
        except OSError as err:
            raise UsageError(f"cannot write to out_dir {str(self.path)!r}: {err.strerror}") from None
        lock = filelock.FileLock(self.path / LOCK)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise UsageError(f"out_dir {str(self.path)!r} is in use by another run ({self._wait_for_owner()}); "
                             "wait for it to end or choose another --out_dir") from None
        except OSError as err:
            raise UsageError(f"cannot write to out_dir {str(self.path)!r}: {err.strerror}") from None
        self._lock = lock
        previous = self._owner()
        if previous:
            log(f"taking over {self.path}: the run that held it ({previous}) ended without releasing it")
        since = datetime.datetime.now().isoformat(" ", "seconds")
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        write_text_atomically(self.path / OWNER, json.dumps(owner))

    def _wait_for_owner(self, seconds: float = 2.0) -> str:
        """The holder, which writes its name just after taking the lock: wait for it a moment if it just did."""
        deadline = time.monotonic() + seconds
        while (owner := self._owner()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return owner or "it did not say which"

    def _owner(self) -> str | None:
        """Who holds (or held) the lock, as written by acquire; None if nobody recorded it."""
        try:
            owner = json.loads((self.path / OWNER).read_text(encoding="utf-8"))
            return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def release(self, remove_if_unused: bool = False) -> None:
        """Give up the lock. With `remove_if_unused`, a directory that acquire created and nothing was written to
        is removed again (a usage error leaves no empty out_dir behind)."""
        if self._lock is None:
            return
        (self.path / OWNER).unlink(missing_ok=True)
        (self.path / LOCK).unlink(missing_ok=True)  # while still held: filelock (>= 4.3) retries on an unlinked file
        self._lock.release()
        self._lock = None
        if remove_if_unused and self._created and all(p.name in (LOCK, OWNER) for p in self.path.iterdir()):
            shutil.rmtree(self.path, ignore_errors=True)

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """Before any work: resumable (`resume`), empty, or to be replaced (`overwrite`); UsageError if not."""
        where = repr(str(self.path))
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"out_dir {where} is a file; choose a directory")
        if resume and not self.checkpoints.is_dir():
            if self.config_file.exists():
                raise UsageError(f"nothing to resume in {where}: its run saved no checkpoint; start it again with "
                                 "--overwrite")
            raise UsageError(f"nothing to resume in {where}: it holds no run; start without --resume")
        if not resume and not self.is_empty() and not overwrite:
            raise UsageError(f"out_dir {where} is not empty; choose another --out_dir, pass --resume to continue "
                             "its run or --overwrite to replace it")

    def is_empty(self) -> bool:
        """No files but the lock's (or no directory at all)."""
        return not self.path.is_dir() or all(p.name in (LOCK, OWNER) for p in self.path.iterdir())

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
        write_text_atomically(self.config_file, config.as_saved().to_json())

    def read_config(self) -> TrainConfig:
        return TrainConfig.from_json(self.config_file.read_text(encoding="utf-8"), str(self.config_file))

    def write_tokenizer(self, tokenizer: Tokenizer) -> None:
        write_text_atomically(self.tokenizer_file, tokenizer.to_json())

    def read_tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_file)

    def read_wandb_id(self) -> str | None:
        """The Weights & Biases run id this run logs to, once it has one."""
        if not self.wandb_id_file.is_file():
            return None
        return self.wandb_id_file.read_text(encoding="utf-8").strip() or None

    def write_wandb_id(self, run_id: str) -> None:
        write_text_atomically(self.wandb_id_file, run_id + "\n")

    # -- metrics ------------------------------------------------------------------------------------------------

    def read_metrics(self) -> list[dict]:
        """The evaluation records, oldest first. A last line cut short (a crash while it was written) is dropped,
        with a warning; any other line that is not a record is an error."""
        if not self.metrics_file.is_file():
            raise UsageError(f"{self.path} has no {METRICS}; is it a jaxgpt run directory?")
        lines = self.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(lines):
                    print(f"warning: ignoring the last line of {self.metrics_file}, cut short by a crash while it "
                          "was written", file=sys.stderr)
                    continue
                record = None
            if not _is_metrics_record(record):
                raise JaxgptError(f"{self.metrics_file} line {number} is not a metrics record; the file is "
                                  "damaged (resume the run to rewrite it from its checkpoints)")
            records.append(record)
        return records

    def write_metrics(self, records: list[dict]) -> None:
        """Replace the metrics with `records`, atomically."""
        write_text_atomically(self.metrics_file, "".join(json.dumps(r) + "\n" for r in records))

    def append_metrics(self, record: dict) -> None:
        """Add one record with a single write to the end of the file: a crash leaves it whole, absent or cut
        short at the end (which read_metrics drops), never inside other records."""
        line = (json.dumps(record) + "\n").encode("utf-8")
        fd = os.open(self.metrics_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a short write: the disk filled up mid-record
        finally:
            os.close(fd)


def _is_metrics_record(value: object) -> bool:
    """Whether `value` is an evaluation record: a JSON object with an int step and the two losses."""
    return (isinstance(value, dict) and type(value.get("step")) is int
            and all(type(value.get(key)) in (int, float) for key in ("train_loss", "val_loss")))
