"""Checkpoints with orbax: a run's training checkpoints, exported params, and `load` for inference.

Where the files live is `jaxgpt.store.rundir.RunDir`'s business; this module reads and writes them. Every random draw
of training derives from (seed, step), so params, optimizer state and meta are all a run needs to continue
exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxgpt.core.config import HOW_TO_COMPUTE, GPTConfig, TrainConfig
from jaxgpt.core.model import check_params
from jaxgpt.data.tokenizers import Tokenizer
from jaxgpt.store.rundir import RunDir
from jaxgpt.system import sharding
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.system.logs import quiet_vanishing_checkpoints


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
    if "os_error_code='28'" in str(err) or getattr(err, "errno", None) == errno.ENOSPC:
        return "no space left on device"
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0].split(" [tensorstore_spec=")[0][:200]


@jax.jit
def _all_finite(tree) -> jax.Array:
    """() bool: whether every element of every leaf is finite (one compiled call, one value to read back)."""
    return jnp.array([jnp.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(tree)]).all()


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

    def __init__(self, run_dir: RunDir | str | os.PathLike, keep: int):
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self._latest = _manager(self.run_dir.checkpoints, keep)
        self._best = _manager(self.run_dir.best, 1)

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
            raise self.failure(f"writing the checkpoint of step {step} to {manager.directory}", err) from None

    def failure(self, what: str, err: BaseException) -> JaxgptError:
        """The error for a write that failed: what and why, the latest complete checkpoint and how to go on."""
        try:
            self._latest.reload()
            latest = self._latest.latest_step()
        except Exception:  # noqa: BLE001 - the directory itself may be gone; then no checkpoint is complete
            latest = None
        if latest is None:
            then = "no checkpoint is complete; start again with --overwrite once it can be written"
        else:
            then = (f"the latest complete checkpoint is step {latest}; continue from it with --resume once the "
                    "problem is fixed")
        return JaxgptError(f"{what} failed ({_reason(err)}); {then}")

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
        does not fit; arrays laid out unlike the targets (another jaxgpt or optax wrote them) are refused too,
        the checkpoint left in place. A damaged checkpoint (a file truncated or missing) is reported, moved to
        `unusable_checkpoints/` and the previous one is tried; with none usable, a JaxgptError lists why.
        """
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
                stored = self._latest.item_metadata(step)
                stored_layouts = {item: _layout(stored[item]) for item in ("params", "opt_state")}
            except Exception as err:  # see _write; a missing item too
                failures.append(self._unusable(step, err, log))
                continue
            for item, like in (("params", params_like), ("opt_state", opt_state_like)):
                _check_layout(step, item, stored_layouts[item], _layout(like), self.run_dir)
            try:
                restored = _restore_checked(self._latest, step, args)
            except Exception as err:  # see _write
                failures.append(self._unusable(step, err, log))
                continue
            if failures:
                log(f"falling back to the previous complete checkpoint, step {step}")
            return Restored(step, restored.params, restored.opt_state, restored.meta)
        directory = self.run_dir.checkpoints
        if failures:
            raise JaxgptError(f"no usable checkpoint in {directory}: {'; '.join(failures)}")
        raise UsageError(f"nothing to resume in {self.run_dir}: no checkpoint in {directory}; "
                         "start without --resume")

    def _unusable(self, step: int, err: Exception, log: Callable[[str], None]) -> str:
        """Report a damaged checkpoint and move it out of the way; returns the reason."""
        aside = self._move_aside(step)
        log(f"checkpoint at step {step} is unusable ({_reason(err)}); moved to {aside}")
        return f"step {step}: {_reason(err)}"

    def _move_aside(self, step: int) -> Path:
        aside = self.run_dir.unusable / str(step)
        if sharding.is_main_process():
            if aside.exists():
                shutil.rmtree(aside)
            aside.parent.mkdir(exist_ok=True)
            shutil.move(self.run_dir.checkpoints / str(step), aside)
        sharding.sync(f"checkpoint {step} moved aside")
        self._latest.reload()
        return aside

    def wait(self) -> None:
        """Block until every started save is complete on disk."""
        try:
            self._latest.wait_until_finished()
            self._best.wait_until_finished()
        except Exception as err:  # see _write
            raise self.failure(f"writing a checkpoint to {self.run_dir}", err) from None

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()


def _dotted(path) -> str:
    """A key path as orbax names a stored array: `inner_states.adamw.inner_state.0.mu.blocks_0...`."""
    return ".".join(str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path)


def _layout(tree) -> dict[str, tuple[int, ...]]:
    """Each array of `tree` (arrays, shape structs or orbax's stored metadata) by name: its shape."""
    return {_dotted(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_layout(step: int, item: str, have: dict, want: dict, run_dir: RunDir) -> None:
    """Refuse, as a usage error, a checkpoint whose `item` arrays (names and shapes, `have`) are not `want`: not
    damage, but another layout, which this version of jaxgpt cannot continue from."""
    if have == want:
        return
    first = sorted(set(have.items()) ^ set(want.items()))[0][0]
    raise UsageError(
        f"cannot resume from step {step} in {run_dir}: its {item} are laid out unlike this jaxgpt's "
        f"({len(have)} arrays stored, {len(want)} expected; first difference at {first}): another version of "
        f"jaxgpt or optax wrote it; resume with that version, or start a new run from its weights with "
        f"--init_from={run_dir}")


def _restore_checked(manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite):
    restored = manager.restore(step, args=args)
    if restored.meta.get("step") != step or "config" not in restored.meta:
        raise ValueError(f"its meta does not describe step {step}")
    if not bool(_all_finite(restored.params)):
        raise ValueError("its params are not all finite")
    return restored


def save_params(run_dir: RunDir | str | os.PathLike, params, config: GPTConfig) -> None:
    """Write bare parameters into a run directory's params/ (orbax, atomically): weights without a training run.
    The model config is stored with them, so that `load` notices a config.json that no longer describes them."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    check_params(config, params)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(run_dir.params, params, force=True, custom_metadata={"model": dataclasses.asdict(config)})


def _on_default_device(metadata_tree) -> Any:
    """Restore target from saved array metadata: the same shapes and dtypes, on this process's first device
    (whatever mesh the run was sharded over)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata_tree)


def _load_exported_params(run_dir: RunDir, config: GPTConfig):
    """The params in params/, after checking that config.json's model is the one they were saved with."""
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            metadata = checkpointer.metadata(run_dir.params)
            saved = (metadata.custom_metadata or {}).get("model") or {}
            described = {name: getattr(config, name, None) for name in saved if name not in HOW_TO_COMPUTE}
            changed = [f"{name} {saved[name]!r} (params) vs {value!r} (config.json)"
                       for name, value in described.items() if value != saved[name]]
            if changed:
                raise UsageError(f"{run_dir.config_file} does not describe the params in {run_dir.params}: "
                                 f"{', '.join(changed)}; restore the config.json they were exported with")
            return checkpointer.restore(run_dir.params, _on_default_device(metadata.item_metadata.tree))
    except UsageError:
        raise
    except Exception as err:  # see RunCheckpoints._write
        raise JaxgptError(f"cannot read the params in {run_dir.params}: {_reason(err)}") from None


READ_ATTEMPTS = 10  # a reader that races a run deleting its old checkpoints lists them again this often


class _Vanished(Exception):
    """A checkpoint disappeared while being read: the training run replaced it with a newer one."""


def _load_checkpoint_params(run_dir: RunDir, step: int | Literal["best"] | None) -> tuple[dict, Any]:
    """(meta, params) of a complete training checkpoint: the latest usable, the best, or a given step. Readers
    take no lock: a checkpoint that a running training deletes while it is read is skipped, and the
    checkpoints are listed again."""
    for _ in range(READ_ATTEMPTS):
        try:
            with quiet_vanishing_checkpoints():
                return _read_checkpoint_params(run_dir, step)
        except _Vanished:
            continue
    raise JaxgptError(f"the checkpoints in {run_dir} were replaced {READ_ATTEMPTS} times while being read; "
                      "try again, or raise the run's --keep_checkpoints")


def _replaced(directory: Path, step: int, listed: list[int]) -> bool:
    """Whether checkpoint `step` is gone or being deleted because a run saved a newer one since `listed`."""
    try:
        saved = [int(p.name) for p in directory.iterdir() if p.name.isdigit()]
    except FileNotFoundError:  # the whole directory went
        return True
    return step not in saved or any(new > step and new not in listed for new in saved)


def _read_checkpoint_params(run_dir: RunDir, step: int | Literal["best"] | None) -> tuple[dict, Any]:
    try:
        latest, best = _manager(run_dir.checkpoints, keep=None), _manager(run_dir.best, keep=None)
        steps = {latest: latest.all_steps(), best: best.all_steps()}
    except (FileNotFoundError, NotADirectoryError):  # a step directory deleted while orbax listed it
        raise _Vanished from None
    with latest, best:
        if step is None:
            candidates = [(latest, s) for s in sorted(steps[latest], reverse=True)]
        elif step == "best":
            candidates = [(best, s) for s in steps[best]]
        else:
            candidates = [(m, s) for m in (latest, best) for s in steps[m] if s == step]
        available = sorted(set(steps[latest]) | set(steps[best]))
        if not available:
            raise UsageError(f"{run_dir} has no checkpoint yet: its run has not saved one (the first comes after "
                             "checkpoint_interval steps); try again then")
        if not candidates:
            raise UsageError(f"no checkpoint for step={step!r} in {run_dir}; steps available: "
                             f"{', '.join(map(str, available))}")
        failures = []
        for manager, candidate in candidates:
            try:
                target = _on_default_device(manager.item_metadata(candidate)["params"].tree)
                args = ocp.args.Composite(params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
                restored = _restore_checked(manager, candidate, args)
            except Exception as err:  # see RunCheckpoints._write
                if _replaced(Path(manager.directory), candidate, steps[manager]):
                    raise _Vanished from None
                failures.append(f"step {candidate}: {_reason(err)}")
                continue
            if failures:
                print(f"warning: skipped unusable checkpoints ({'; '.join(failures)}); loaded step {candidate}",
                      file=sys.stderr)
            return restored.meta, restored.params
    raise JaxgptError(f"no usable checkpoint in {run_dir}: {'; '.join(failures)}")


def load(run: str | os.PathLike, step: int | Literal["best"] | None = None) -> tuple[TrainConfig, dict, Tokenizer]:
    """(config, params, tokenizer) of a run directory, for sampling and notebooks.

    `step=None` gives the latest usable training checkpoint (or, in a directory of exported params, those);
    `step="best"` the lowest-val-loss one; an int that step. Arrays land on the default device.
    """
    run_dir = RunDir(run)
    run_dir.check_readable()
    if step is not None and step != "best" and (isinstance(step, bool) or not isinstance(step, int)):
        raise UsageError(f"step must be an int, 'best' or None, got {step!r}")
    tokenizer = run_dir.read_tokenizer()
    if run_dir.has_checkpoints():
        meta, params = _load_checkpoint_params(run_dir, step)
        config = TrainConfig.from_dict(meta["config"])
    elif run_dir.has_params() and step is None:
        config = run_dir.read_config()
        params = _load_exported_params(run_dir, config.model)
    elif run_dir.has_params():
        raise UsageError(f"{run_dir} holds exported params only, no training checkpoints; load it with step=None")
    else:
        raise UsageError(f"{run_dir} has no checkpoints/ and no params/: the run saved no weights yet")
    if config.model.vocab_size != tokenizer.vocab_size:
        raise UsageError(f"{run_dir}: {run_dir.tokenizer_file.name} has {tokenizer.vocab_size} tokens but the "
                         f"model expects vocab_size {config.model.vocab_size}")
    check_params(config.model, params, f"the params in {run_dir}")
    return config, params, tokenizer
