"""A training run: `train(config)` from start to sample, and `Run`, which holds one run's parts.

The order is linear: the weights and the data settle the config (`resolve_start`), the mesh and the run directory
come next, then the state and the trainer, the checkpoints (restored with `--resume`), the loop (`Run.fit`), the
loss plot and a sample. Sharded over all devices of all processes (`--fsdp`, `--multihost`); only process 0 logs
and writes files other than checkpoints (orbax coordinates those).

The command line is `python -m jaxgpt.train` (jaxgpt/train.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxgpt.core.config import TrainConfig
from jaxgpt.core.keys import SAMPLE_STREAM, stream_key
from jaxgpt.core.model import LanguageModel, build_model
from jaxgpt.core.optim import make_optimizer
from jaxgpt.core.sampling import generate
from jaxgpt.data.batches import Batches, DeviceBatches, HostBatches
from jaxgpt.data.text import Dataset
from jaxgpt.data.tokenizers import default_prompt
from jaxgpt.run.inspect_page import write_page
from jaxgpt.run.inspection import inspect_tokens, run_page_tokens
from jaxgpt.run.plot import write_loss_plot
from jaxgpt.run.profiler import ProfileWindow
from jaxgpt.run.resume import check_checkpoint, check_tokenizer_unchanged
from jaxgpt.run.start import Start, initial_state, resolve_start
from jaxgpt.run.step import TrainState
from jaxgpt.run.trackers import Trackers, check_installed, chosen
from jaxgpt.run.trainer import Trainer
from jaxgpt.store.checkpoint import RunCheckpoints
from jaxgpt.store.rundir import RunDir
from jaxgpt.system import sharding
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.system.interrupt import StopRequest

PROGRESS_EVERY = 50  # steps between progress-bar loss readings


def eval_steps(config: TrainConfig) -> list[int]:
    """Steps (optimizer updates done) after which the losses are estimated: 0 (with `eval_at_start`), every
    interval, and the last."""
    first = 0 if config.eval_at_start else config.eval_interval
    return sorted(set(range(first, config.max_iters, config.eval_interval)) | {config.max_iters})


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    dataset: Dataset
    config: TrainConfig  # resolved: the weights' model, the data's vocab_size, the "auto" choices
    history: list[dict[str, float]]
    interrupted: bool = False  # stopped early by a signal, after saving a checkpoint


def _quiet(_: str) -> None:
    """The log of processes other than 0."""


def train(config: TrainConfig, log: Callable[[str], None] = print, stop: StopRequest | None = None) -> TrainResult:
    """Run the lecture's training loop; writes config, tokenizer, metrics, checkpoints and plot to out_dir.

    With `config.resume`, continues the run in out_dir from its latest usable checkpoint. `stop` ends the run
    after the current step, with a checkpoint (see `Run.fit`).
    """
    with Run(config, log) as run:  # weights, data, mesh, run directory, state, checkpoints (resumed)
        interrupted = run.fit(stop)  # the loop
        if not interrupted and config.plot and run.is_main and (no_plot := write_loss_plot(run.run_dir)):
            run.log(no_plot)
        if not interrupted and config.inspect and run.is_main:
            run.write_inspect_page()
    if not interrupted and config.sample_chars:
        run.log(run.sample_text(config.sample_chars))
    return TrainResult(run.state, run.dataset, run.config, run.history, interrupted)


def make_batches(config: TrainConfig, placement: sharding.Placement, dataset: Dataset) -> Batches:
    """A text file's splits go on the devices, whose steps draw their windows there; a prepared dataset's stay
    memory-mapped on the host, which gathers the windows."""
    if dataset.memory_mapped:
        return HostBatches(config, placement, dataset.train, dataset.val)
    return DeviceBatches(config, placement, {"train": dataset.train, "val": dataset.val})


class Run:
    """One training run: its `Trainer` (state, compiled step, loss estimates), run directory, checkpoints and
    metrics history.

    `Run(config)` starts it: the weights and data (`resolve_start`), the mesh, the run directory (checked and
    locked), the state, and with `config.resume` the latest usable checkpoint. Then `fit()` trains to max_iters;
    `step()`, `evaluate()` and `save()` are its parts. Use it as a context manager (or call `close()`):
    checkpoints are written in the background until then.
    """

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print):
        sharding.initialize_distributed(config.multihost)
        self.is_main = sharding.is_main_process()
        self.log = log if self.is_main else _quiet
        start = resolve_start(config, self.log)
        self.config, self.dataset = start.config, start.dataset
        self.mesh = sharding.make_mesh(self.config.fsdp)
        sharding.check_batch_size(self.config.batch_size, self.mesh)
        self.run_dir = RunDir(self.config.out_dir)
        self.checkpoints: RunCheckpoints | None = None
        self.trainer: Trainer | None = None
        self.trackers: Trackers | None = None
        check_installed(self.config)
        if self.is_main:
            self.run_dir.acquire(self.log)  # the only writer from here on
        try:
            self._build(start)
        except BaseException:
            self._abandon()
            raise

    def _build(self, start: Start) -> None:
        config = self.config
        self.run_dir.check_start(config.resume, config.overwrite)
        sharding.sync("out_dir checked")  # every process looks before process 0 writes
        if self.is_main:
            self.run_dir.create(config.overwrite)
        tx = make_optimizer(config)
        state, placement = initial_state(start, tx, self.mesh)
        self.trainer = Trainer(config, build_model(config.model), tx, placement,
                               make_batches(config, placement, self.dataset), state,
                               self.dataset.tokenizer.token_bytes())
        self.log(f"{self.trainer.n_params / 1e6:.6f} M parameters")
        state_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)))
        self.run_dir.check_free_space(state_bytes, copies=config.keep_checkpoints + 2)
        self.data_sha256 = self.dataset.fingerprint()
        self.checkpoints = RunCheckpoints(self.run_dir, config.keep_checkpoints)
        self.history: list[dict[str, float]] = []
        self.last_saved = self.checkpoints.latest_step()
        self.best_val_loss = self.checkpoints.best_val_loss()
        if config.resume:
            self.restore()
        elif self.is_main:
            self._write_run_files()
        self.trackers = Trackers(self.run_dir, chosen(config) if self.is_main else [], config, self.log)
        self.trainer.reset_clock()

    # -- the trainer's parts, as the run's --------------------------------------------------------------------

    @property
    def state(self) -> TrainState:
        return self.trainer.state

    @state.setter
    def state(self, state: TrainState) -> None:
        self.trainer.state = state

    @property
    def model(self) -> LanguageModel:
        return self.trainer.model

    @property
    def steps_per_call(self) -> int:
        return self.trainer.steps_per_call

    @property
    def host_batches(self) -> HostBatches | None:
        """The host-gathered windows of a prepared dataset; None where the steps draw them on the devices."""
        return self.trainer.batches if isinstance(self.trainer.batches, HostBatches) else None

    @property
    def step_count(self) -> int:
        """Optimizer steps done (reads the device's counter)."""
        return self.trainer.step_count

    def compile(self) -> jax.stages.Compiled:
        """The train step compiled for the steps per call from the current step (`Trainer.compile`)."""
        return self.trainer.compile()

    def step(self) -> jax.Array:
        """`steps_per_call` optimizer steps in one compiled call; returns the last one's loss (still on device)."""
        return self.trainer.step()

    @property
    def tokens_per_step(self) -> int:
        return self.trainer.tokens_per_step

    def tokens_per_sec(self) -> float | None:
        return self.trainer.tokens_per_sec()

    def full_loss(self, tokens: np.ndarray) -> tuple[float, float]:
        """(mean loss, bits per byte) over the whole split `tokens` (N,) (`Trainer.full_loss`)."""
        return self.trainer.full_loss(tokens)

    # -- the run's own --------------------------------------------------------------------------------------------

    def _write_run_files(self) -> None:
        self.run_dir.write_metrics(self.history)  # on resume: without the evaluations after the checkpoint
        self.run_dir.write_config(self.config)
        self.run_dir.write_tokenizer(self.dataset.tokenizer)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(JaxgptError):  # the error on its way out is the one to report, not one from closing
            self.close()

    def close(self) -> None:
        """Wait for the checkpoints being written, then release them and the run directory."""
        try:
            self.trainer.batches.close()
            self.trackers.close()
            self.checkpoints.close()
        finally:
            self.run_dir.release()

    def _abandon(self) -> None:
        """After a failed start: release what was taken; an out_dir this run created and left empty goes too."""
        try:
            if self.trainer is not None:
                self.trainer.batches.close()
            if self.trackers is not None:
                self.trackers.close()
            if self.checkpoints is not None:
                self.checkpoints.close()
        finally:
            self.run_dir.release(remove_if_unused=True)

    def evaluate(self) -> dict[str, float | None]:
        """Train and val loss at the current step (`Trainer.measure`): logged and appended to the metrics."""
        self.raise_if_diverged()
        record = self.trainer.measure(self.dataset.val)
        if not np.isfinite(record["train_loss"]):
            raise JaxgptError(f"loss became {record['train_loss']} at step {record['step']}; "
                              "lower --learning_rate or set --grad_clip")
        self.history.append(record)
        if self.is_main:
            try:
                self.run_dir.append_metrics(record)
            except OSError as err:
                raise self.checkpoints.failure(f"writing {self.run_dir.metrics_file}", err) from None
        self.trackers.log(record)
        self.log(f"step {record['step']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
        return record

    def save(self) -> None:
        """Start writing a checkpoint of the current step (finished in the background)."""
        self.raise_if_diverged()  # nothing non-finite becomes the latest checkpoint
        step = self.step_count
        meta = {**self._meta(), "step": step, "val_loss": self.history[-1]["val_loss"] if self.history else None}
        self.checkpoints.save(step, self.state.params, self.state.opt_state, meta)
        self.last_saved = step

    def save_best(self) -> None:
        """Keep the current params as the run's best checkpoint (by the last evaluation's val loss)."""
        self.best_val_loss = self.history[-1]["val_loss"]
        meta = {**self._meta(), "step": self.step_count, "val_loss": self.best_val_loss}
        self.checkpoints.save_best(self.step_count, self.state.params, meta)

    def _meta(self) -> dict[str, Any]:
        return {"seed": self.config.seed, "config": self.config.as_saved().to_dict(), "data_sha256": self.data_sha256}

    def restore(self) -> None:
        """Continue from the latest usable checkpoint, checked against this config and data; the metrics after it
        are dropped (they are recomputed)."""

        def check(step: int, meta: dict) -> None:
            check_checkpoint(meta, f"step {step} in {self.run_dir}", self.config, self.data_sha256, self.log)

        check_tokenizer_unchanged(self.run_dir, self.dataset.tokenizer, self.config.data_path or "the data")
        restored = self.checkpoints.restore_latest(self.state.params, self.state.opt_state, self.log, check)
        self.checkpoints.discard_best_after(restored.step)
        self.best_val_loss = self.checkpoints.best_val_loss()
        self.history = [r for r in self.run_dir.read_metrics() if r["step"] <= restored.step]
        self.log(f"resuming from step {restored.step}")
        self.trainer.restart_at(restored.step, restored.params, restored.opt_state)
        self.last_saved = restored.step
        if self.is_main:
            self._write_run_files()

    def raise_if_diverged(self) -> None:
        """Stop with a clear error once a step went non-finite (reads one scalar: waits for the device)."""
        bad = int(self.state.first_bad_step)
        if bad >= 0:
            saved = self.last_saved is not None
            kept = (f"the latest checkpoint is still step {self.last_saved} in {self.run_dir}" if saved
                    else "no checkpoint was written")
            then = "--resume" if saved else "start again with --overwrite"
            raise JaxgptError(f"training diverged: the loss or parameters became non-finite at step {bad}; {kept}; "
                              f"lower --learning_rate or set --grad_clip, then {then}")

    def fit(self, stop: StopRequest | None = None) -> bool:
        """Train to max_iters, evaluating, logging and checkpointing. Returns whether `stop` (set by a signal
        handler, see jaxgpt.system.interrupt) ended the run early, after a checkpoint of that step."""
        stop, config, step = stop or StopRequest(), self.config, self.step_count
        if step == 0 and not self.history and config.eval_at_start:
            self.evaluate()
        if step >= config.max_iters:
            self.log(f"step {step} is already max_iters {config.max_iters}: nothing to train "
                     "(raise --max_iters to go on)")
        evals = set(eval_steps(config))
        bar = tqdm(initial=step, total=config.max_iters, disable=not (config.progress and self.is_main),
                   dynamic_ncols=True, leave=False, file=sys.stderr)
        profile = ProfileWindow(config.profile if self.is_main else "", self.run_dir.profile, self.log)
        while step < config.max_iters and not stop.agreed(step):
            profile.before_call(step, self.steps_per_call)
            loss = profile.run(step, self.step)
            self.trainer.compile_evaluation_ahead(len(self.dataset.val))  # the first time: beside the steps
            step += self.steps_per_call
            profile.after_call(step, self.state)
            bar.update(self.steps_per_call)
            if step % PROGRESS_EVERY < self.steps_per_call:  # reading the loss waits for the device: not every step
                self.raise_if_diverged()
                bar.set_postfix(loss=f"{float(loss):.4f}", tok_s=f"{self.tokens_per_sec():,.0f}")
            if step in evals:
                jax.block_until_ready(self.state)
                bar.clear()
                if self.evaluate()["val_loss"] < self.best_val_loss:
                    self.save_best()
            if step % config.checkpoint_interval == 0 or step == config.max_iters:
                self.save()
            if step in evals:
                self.trainer.reset_clock()
        bar.close()
        profile.close(step)
        if step < config.max_iters and self.last_saved != step:
            self.save()
        return step < config.max_iters

    def write_inspect_page(self) -> None:
        """inspect.html: the model over the start of the val split (`run_page_tokens`), as `python -m
        jaxgpt.inspect` shows a text."""
        if jax.process_count() > 1:  # its arrays would span hosts; the command reads the checkpoint on one
            self.log(f"no {self.run_dir.inspect_file.name} for a multi-host run: python -m jaxgpt.inspect "
                     f"{self.run_dir} --text=FILE writes one")
            return
        n_tokens = run_page_tokens(len(self.dataset.val), self.config.model.block_size)
        tokens = np.asarray(self.dataset.val[:n_tokens])
        text = self.dataset.tokenizer.decode(tokens)
        try:
            seen = inspect_tokens(self.config.model, self.state.params, self.dataset.tokenizer, tokens, "this run")
        except UsageError as err:  # a bigram model, a val split of one token
            self.log(f"no {self.run_dir.inspect_file.name}: {err}")
            return
        write_page(self.run_dir.inspect_file, text, [seen])

    def sample_text(self, num_tokens: int) -> str:
        """`num_tokens` tokens (characters with the lecture's tokenizer) continuing `default_prompt`: token 0, a
        newline in Shakespeare, as the lecture samples; the end-of-text token with BPE."""
        prompt = jnp.asarray([default_prompt(self.dataset.tokenizer)], jnp.int32)  # (1, 1)
        key = stream_key(self.config.seed, SAMPLE_STREAM)
        tokens = generate(self.config.model, self.state.params, prompt, num_tokens, key)
        return self.dataset.tokenizer.decode(tokens[0, 1:])
