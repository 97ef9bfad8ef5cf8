"""A run directory and its checkpoints (orbax).

    OUT_DIR/
      config.json              the run's TrainConfig (vocab_size set from the data)
      tokenizer.json           the character vocabulary
      metrics.jsonl            one JSON line per evaluation
      checkpoints/STEP/        the latest `keep_checkpoints` training checkpoints: params, opt_state, meta
      checkpoints_best/STEP/   the checkpoint with the lowest val loss so far: params, meta
      unusable_checkpoints/    checkpoints found damaged on resume, moved out of the way
      params/                  exported weights only (`save_params`, e.g. converted models)
      loss.png                 loss curves

A checkpoint's `meta` item (JSON) holds its step, seed, config, the sha256 of the training text and the
last val loss. Every random draw of training derives from (seed, step), so params, optimizer state and meta
are all a run needs to continue exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxgpt import sharding
from jaxgpt.config import TrainConfig
from jaxgpt.data import CharTokenizer
from jaxgpt.errors import JaxgptError, UsageError

CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "checkpoints_best"
UNUSABLE_DIR = "unusable_checkpoints"
PARAMS_DIR = "params"
# Everything a run writes into its out_dir; `--overwrite` removes exactly these.
RUN_ENTRIES = ("config.json", "tokenizer.json", "metrics.jsonl", "loss.png", CHECKPOINTS_DIR, BEST_DIR,
               UNUSABLE_DIR, PARAMS_DIR)


def remove_run(out_dir: str | os.PathLike) -> None:
    """Delete what a run wrote into out_dir (RUN_ENTRIES), leaving any other file there alone."""
    for name in RUN_ENTRIES:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _manager(directory: Path, keep: int | None) -> ocp.CheckpointManager:
    """A manager that writes (keeping the latest `keep` steps) or, with keep=None, only reads."""
    writing = keep is not None
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.LatestN(keep) if writing else None,
        enable_async_checkpointing=writing,  # the loop continues while the files are written
        cleanup_tmp_directories=writing,  # leftovers of a save that was killed
        create=writing,
        # Orbax names its cross-process barriers after the step; the prefix keeps the latest and the best
        # manager, which save the same step at once, from waiting on each other's barriers.
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=directory.name),
    )
    handlers = {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _abstract(tree) -> Any:
    """Shapes, dtypes and shardings of `tree`'s arrays: the target that restored arrays are placed like."""
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def _reason(err: BaseException) -> str:
    """The root cause of an orbax/tensorstore error, on one short line."""
    while err.__cause__ is not None:
        err = err.__cause__
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0].split(" [tensorstore_spec=")[0][:200]


_READ_FAILURE_MARKS = ("Event loop is closed", "_read_array_index", "Encountered error while reading array index")


def _is_read_failure_leftover(text: str) -> bool:
    return any(mark in text for mark in _READ_FAILURE_MARKS)


class _ReadFailureLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_read_failure_leftover(record.getMessage())


def _drop_failed_read_leftovers() -> None:
    """When orbax fails to read a damaged checkpoint, its abandoned concurrent reads raise again in other
    threads, at garbage collection and in asyncio's log ("Event loop is closed", "exception was never
    retrieved", "never awaited"): pages of tracebacks, at any later time. The caller reports the failure once,
    so drop exactly these (installed before reading); everything else still reaches the previous hook/log."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_failed_read_leftovers", False):
        return

    def hook(unraisable) -> None:
        if not _is_read_failure_leftover(f"{unraisable.exc_value} {unraisable.object!r}"):
            previous(unraisable)

    hook.drops_failed_read_leftovers = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_ReadFailureLogFilter())
    warnings.filterwarnings("ignore", message="coroutine '_read_array_index", category=RuntimeWarning)


def _all_finite(tree) -> bool:
    return all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree_util.tree_leaves(tree))


@dataclasses.dataclass(frozen=True)
class Restored:
    """A training checkpoint read back: arrays placed like the target, and its meta."""

    step: int
    params: Any
    opt_state: Any
    meta: dict[str, Any]


class RunCheckpoints:
    """The training checkpoints of one run: the latest `keep` ones and, apart, the best-val one.

    Saves are asynchronous: `save` returns once the arrays are copied off the device, and the files are
    written in the background. A checkpoint appears under its step number only once complete (orbax writes
    a temporary directory and renames it), so a save that is killed leaves no half checkpoint behind.
    """

    def __init__(self, out_dir: str | os.PathLike, keep: int):
        self.out_dir = Path(out_dir).absolute()
        self._latest = _manager(self.out_dir / CHECKPOINTS_DIR, keep)
        self._best = _manager(self.out_dir / BEST_DIR, 1)

    def __enter__(self) -> RunCheckpoints:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, step: int, params, opt_state, meta: dict[str, Any]) -> None:
        """Start writing a training checkpoint (params, optimizer state, meta) for `step`."""
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                                  meta=ocp.args.JsonSave(meta))
        self._write(self._latest, step, args)

    def save_best(self, step: int, params, meta: dict[str, Any]) -> None:
        """Start writing `params` as the run's best checkpoint (the previous best is then removed)."""
        args = ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta))
        self._write(self._best, step, args)

    def _write(self, manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite) -> None:
        try:
            manager.save(step, args=args, force=True)
        except Exception as err:  # orbax and tensorstore raise bare Exceptions, OSError, ValueError ...
            raise JaxgptError(f"could not write the checkpoint of step {step} to {manager.directory}: "
                              f"{_reason(err)}; the latest complete checkpoint is step {self._last_complete()}"
                              ) from None

    def _last_complete(self) -> int | None:
        self._latest.reload()
        return self._latest.latest_step()

    def best_val_loss(self) -> float:
        """The val loss of the best checkpoint, or infinity when there is none."""
        step = self._best.latest_step()
        if step is None:
            return float("inf")
        meta = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        return float(meta["val_loss"])

    def discard_best_after(self, step: int) -> None:
        """Remove best checkpoints newer than `step`: a resumed run recomputes them."""
        for best_step in self._best.all_steps():
            if best_step > step:
                self._best.delete(best_step)

    def restore_latest(self, params_like, opt_state_like, log: Callable[[str], None],
                       check_meta: Callable[[int, dict], None]) -> Restored:
        """The newest usable checkpoint, arrays placed like `params_like`/`opt_state_like` (any device count).

        `check_meta(step, meta)` sees each candidate's meta before its arrays are read, to refuse a config that
        does not fit. A damaged checkpoint (a file truncated or missing) is reported, moved to
        `unusable_checkpoints/` and the previous one is tried; with none usable, a JaxgptError lists why.
        """
        _drop_failed_read_leftovers()
        meta_only = ocp.args.Composite(meta=ocp.args.JsonRestore())
        args = ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(params_like)),
                                  opt_state=ocp.args.StandardRestore(_abstract(opt_state_like)),
                                  meta=ocp.args.JsonRestore())
        failures = []
        for step in sorted(self._latest.all_steps(), reverse=True):
            try:
                meta = self._latest.restore(step, args=meta_only).meta
            except Exception as err:  # see _write
                failures.append(self._unusable(step, err, log))
                continue
            check_meta(step, meta)
            try:
                restored = _restore_checked(self._latest, step, args)
            except Exception as err:  # see _write
                failures.append(self._unusable(step, err, log))
                continue
            if failures:
                log(f"falling back to the previous complete checkpoint, step {step}")
            return Restored(step, restored.params, restored.opt_state, restored.meta)
        directory = self.out_dir / CHECKPOINTS_DIR
        if failures:
            raise JaxgptError(f"no usable checkpoint in {directory}: {'; '.join(failures)}")
        raise UsageError(f"nothing to resume in {self.out_dir}: no checkpoint in {directory}; "
                         "start without --resume")

    def _unusable(self, step: int, err: Exception, log: Callable[[str], None]) -> str:
        """Report a damaged checkpoint and move it out of the way; returns the reason."""
        aside = self._move_aside(step)
        log(f"checkpoint at step {step} is unusable ({_reason(err)}); moved to {aside}")
        return f"step {step}: {_reason(err)}"

    def _move_aside(self, step: int) -> Path:
        aside = self.out_dir / UNUSABLE_DIR / str(step)
        if sharding.is_main_process():
            if aside.exists():
                shutil.rmtree(aside)
            aside.parent.mkdir(exist_ok=True)
            shutil.move(self.out_dir / CHECKPOINTS_DIR / str(step), aside)
        sharding.sync(f"checkpoint {step} moved aside")
        self._latest.reload()
        return aside

    def wait(self) -> None:
        """Block until every started save is complete on disk."""
        try:
            self._latest.wait_until_finished()
            self._best.wait_until_finished()
        except Exception as err:  # see _write
            raise JaxgptError(f"writing a checkpoint to {self.out_dir} failed: {_reason(err)}") from None

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()


def _restore_checked(manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite):
    restored = manager.restore(step, args=args)
    if restored.meta.get("step") != step or "config" not in restored.meta:
        raise ValueError(f"its meta does not describe step {step}")
    if not _all_finite(restored.params):
        raise ValueError("its params are not all finite")
    return restored


def check_free_space(out_dir: str | os.PathLike, state_tree, copies: int) -> None:
    """UsageError when out_dir's disk cannot hold `copies` checkpoints of `state_tree`."""
    need = copies * sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state_tree))
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise UsageError(f"out_dir {str(out_dir)!r} has {free / 1e6:.1f} MB free but {copies} checkpoints need about "
                         f"{need / 1e6:.1f} MB; free some space, lower --keep_checkpoints or choose another --out_dir")


def save_params(out_dir: str | os.PathLike, params) -> None:
    """Write bare parameters to OUT_DIR/params (orbax, written atomically): weights without a training run."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(out_dir).absolute() / PARAMS_DIR, params, force=True)


def _on_default_device(metadata_tree) -> Any:
    """Restore target from saved array metadata: the same shapes and dtypes, on this process's first device
    (whatever mesh the run was sharded over)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata_tree)


def _load_exported_params(out_dir: Path):
    _drop_failed_read_leftovers()
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            target = _on_default_device(checkpointer.metadata(out_dir / PARAMS_DIR).item_metadata.tree)
            return checkpointer.restore(out_dir / PARAMS_DIR, target)
    except Exception as err:  # see RunCheckpoints._write
        raise JaxgptError(f"cannot read the params in {out_dir / PARAMS_DIR}: {_reason(err)}") from None


def _load_checkpoint_params(out_dir: Path, step: int | Literal["best"] | None) -> tuple[dict, Any]:
    """(meta, params) of a training checkpoint: the latest usable, the best, or a given step."""
    _drop_failed_read_leftovers()
    with _manager(out_dir / CHECKPOINTS_DIR, keep=None) as latest, _manager(out_dir / BEST_DIR, keep=None) as best:
        if step is None:
            candidates = [(latest, s) for s in sorted(latest.all_steps(), reverse=True)]
        elif step == "best":
            candidates = [(best, s) for s in best.all_steps()]
        else:
            candidates = [(m, s) for m in (latest, best) for s in m.all_steps() if s == step]
        if not candidates:
            available = ", ".join(map(str, sorted(set(latest.all_steps()) | set(best.all_steps())))) or "none"
            raise UsageError(f"no checkpoint for step={step!r} in {out_dir}; steps available: {available}")
        failures = []
        for manager, candidate in candidates:
            try:
                target = _on_default_device(manager.item_metadata(candidate)["params"].tree)
                args = ocp.args.Composite(params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
                restored = _restore_checked(manager, candidate, args)
            except Exception as err:  # see RunCheckpoints._write
                failures.append(f"step {candidate}: {_reason(err)}")
                continue
            if failures:
                print(f"warning: skipped unusable checkpoints ({'; '.join(failures)}); loaded step {candidate}",
                      file=sys.stderr)
            return restored.meta, restored.params
    raise JaxgptError(f"no usable checkpoint in {out_dir}: {'; '.join(failures)}")


def load(out_dir: str | os.PathLike, step: int | Literal["best"] | None = None) -> tuple[TrainConfig, dict,
                                                                                        CharTokenizer]:
    """(config, params, tokenizer) of a run directory, for sampling and notebooks.

    `step=None` gives the latest usable training checkpoint (or, in a directory written by `save_params`, its
    params); `step="best"` the lowest-val-loss one; an int that step. Arrays land on the default device.
    """
    out_dir = Path(out_dir).absolute()
    if not out_dir.exists():
        raise UsageError(f"run directory {str(out_dir)!r} does not exist")
    if not out_dir.is_dir():
        raise UsageError(f"run directory {str(out_dir)!r} is not a directory")
    if step is not None and step != "best" and (isinstance(step, bool) or not isinstance(step, int)):
        raise UsageError(f"step must be an int, 'best' or None, got {step!r}")
    for name in ("config.json", "tokenizer.json"):
        if not (out_dir / name).is_file():
            raise UsageError(f"{out_dir} is not a jaxgpt run directory: {name} is missing")
    tokenizer = _load_tokenizer(out_dir / "tokenizer.json")
    has_checkpoints = (out_dir / CHECKPOINTS_DIR).is_dir() or (out_dir / BEST_DIR).is_dir()
    if has_checkpoints:
        meta, params = _load_checkpoint_params(out_dir, step)
        config = TrainConfig.from_dict(meta["config"])
    elif (out_dir / PARAMS_DIR).is_dir() and step is None:
        config, params = TrainConfig.load(out_dir / "config.json"), _load_exported_params(out_dir)
    elif (out_dir / PARAMS_DIR).is_dir():
        raise UsageError(f"{out_dir} holds exported params only, no training checkpoints; load it with step=None")
    else:
        raise UsageError(f"{out_dir} has no checkpoints/ and no params/: the run saved no weights yet")
    if config.model.vocab_size != tokenizer.vocab_size:
        raise UsageError(f"{out_dir}: tokenizer.json has {tokenizer.vocab_size} characters but the model expects "
                         f"vocab_size {config.model.vocab_size}")
    return config, params, tokenizer


def _load_tokenizer(path: Path) -> CharTokenizer:
    try:
        return CharTokenizer.load(path)
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is not a valid tokenizer file ({type(err).__name__}: {err})") from None


def data_fingerprint(train_tokens: np.ndarray, val_tokens: np.ndarray) -> str:
    """sha256 of the encoded training text: a resumed run must train on the same tokens."""
    digest = hashlib.sha256(np.ascontiguousarray(train_tokens).tobytes())
    digest.update(np.ascontiguousarray(val_tokens).tobytes())
    return digest.hexdigest()


# May change on resume without changing what training computes.
FREE_ON_RESUME = frozenset({"eval_interval", "eval_iters", "checkpoint_interval", "keep_checkpoints", "progress",
                            "sample_chars", "out_dir", "overwrite", "resume", "data_path"})


def check_resume_config(saved: TrainConfig, current: TrainConfig, where: str) -> list[str]:
    """Refuse a config whose model or optimizer-state structure differs from the checkpoint's (UsageError
    naming the fields); otherwise return the changed fields that make the continuation differ, e.g. a new
    learning_rate or max_iters. Every model field but dropout must match."""
    model_fields = [f.name for f in dataclasses.fields(saved.model) if f.name != "dropout"]
    fixed = [(name, getattr(saved.model, name), getattr(current.model, name)) for name in model_fields]
    fixed += [(name, getattr(saved, name), getattr(current, name)) for name in ("model_type", "decay_all_params")]
    fixed.append(("grad_clip > 0", saved.grad_clip > 0, current.grad_clip > 0))  # clipping adds optimizer state
    mismatched = [f"{name} (checkpoint {old!r}, now {new!r})" for name, old, new in fixed if old != new]
    if mismatched:
        raise UsageError(f"cannot resume from {where}: the config differs in {', '.join(mismatched)}; "
                         "use the checkpoint's values or a new --out_dir")
    changed = [("dropout", saved.model.dropout, current.model.dropout)]
    changed += [(f.name, getattr(saved, f.name), getattr(current, f.name)) for f in dataclasses.fields(TrainConfig)
                if f.name != "model" and f.name not in FREE_ON_RESUME]
    return [f"{name} {old!r} -> {new!r}" for name, old, new in changed if old != new]
