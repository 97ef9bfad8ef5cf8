"""Training: a `Run` owns one training run; `train(config)` builds one and runs it to the end.

Every random draw derives from (seed, step): batches and dropout masks of step s come from
`fold_in(train_key, s)` inside the jitted step, so the same seed gives the same run, and a run resumed
from a checkpoint (`--resume`) continues exactly as if it had never stopped.

The command line is `python -m jaxgpt.train` (jaxgpt/cli/train.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm.auto import tqdm

from jaxgpt import pretrained, sharding
from jaxgpt.checkpoint import RunCheckpoints
from jaxgpt.config import GPTConfig, TrainConfig, resume_changes
from jaxgpt.data import Dataset, consecutive_windows, eval_offsets, gather_windows, load_dataset, train_offsets
from jaxgpt.errors import JaxgptError, UsageError
from jaxgpt.interrupt import StopRequest
from jaxgpt.keys import INIT_STREAM, SAMPLE_STREAM, eval_keys, step_keys, stream_key
from jaxgpt.loader import HostBatches
from jaxgpt.mfu import device_peak_flops, mfu
from jaxgpt.model import LanguageModel, build_model, count_params, init_params
from jaxgpt.optim import learning_rate_schedule, make_optimizer
from jaxgpt.plot import write_loss_plot
from jaxgpt.rundir import RunDir
from jaxgpt.sample import default_prompt, generate
from jaxgpt.tokenizers import Tokenizer, describe

PROGRESS_EVERY = 50  # steps between progress-bar loss readings
FULL_EVAL_BATCHES = 16  # batches of consecutive windows per compiled call of the whole-split loss


class TrainState(struct.PyTreeNode):
    """What changes during training: the step count, parameters and optimizer state."""

    step: jax.Array  # () int32
    params: Any
    opt_state: Any
    first_bad_step: jax.Array  # () int32: first step whose loss or params became non-finite; -1 while none

    @classmethod
    def fresh(cls, params, tx: optax.GradientTransformation) -> TrainState:
        """Step 0: `params` with a new optimizer state."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   first_bad_step=jnp.full((), -1, jnp.int32))


def all_finite(tree) -> jax.Array:
    """() bool: no NaN or inf in any leaf of `tree`."""
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(tree)]).all()


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """(B, T) next-token cross-entropies of logits (B, T, V), computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy, as F.cross_entropy on (B*T, V), computed in float32."""
    return token_losses(logits, targets).mean()


def make_train_step(config: TrainConfig, model: LanguageModel, tx: optax.GradientTransformation,
                    placement: sharding.Placement, host_windows: bool = False) -> Callable:
    """state, data -> (state, loss): `steps_per_call` times (once for 0, the automatic choice, which `Run`
    resolves) batch, forward, backward and optimizer update.

    `data` is the train split on the device (N,), from which the call draws its steps' windows, or with
    `host_windows` those windows (K, A, B, T + 1) gathered on the host (jaxgpt.loader) from the same offsets
    (`data.train_offsets`): the two give the same steps.

    One compiled call; several steps run in a `lax.scan` (less dispatch overhead), each with the keys of its
    own step, so the result is the same as calling a one-step function that many times. `loss` is the last step's.
    With `grad_accum` A > 1 a step's A micro-batches of B rows go forward and backward one after the other (a
    `lax.scan`: the memory of one micro-batch) and their mean gradient makes one update, equal to one batch of
    A * B rows. The batch is drawn whole (the same on any mesh) and split over the data axes; the state keeps
    `placement` (pass one placed there, `jax.device_put(state, placement.state)`: another is moved, but the step
    compiles once for it and once more for the placed states it returns).

    The first step whose loss or updated params are not finite is recorded in `first_bad_step`, which the
    host reads only where it waits for the device anyway (progress, evaluation, checkpoints) and before any
    save: a diverged state is never written. Checking the params covers the gradients: AdamW turns a NaN or
    inf gradient into a NaN update.
    """
    K, A, B, T = max(config.steps_per_call, 1), config.grad_accum, config.batch_size, config.block_size

    def loss_fn(params, windows, dropout_key):  # windows (B, T + 1)
        x, y = placement.constrain_batch(windows[:, :-1], windows[:, 1:])  # (B, T) each
        logits = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
        return cross_entropy(logits, y)

    def loss_and_grads(params, windows, dropout_key):  # windows (A, B, T + 1)
        if A == 1:
            return jax.value_and_grad(loss_fn)(params, windows[0], dropout_key)

        def accumulate(total, micro_batch):
            return jax.tree_util.tree_map(jnp.add, total, jax.value_and_grad(loss_fn)(params, *micro_batch)), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, (jnp.zeros((), jnp.float32), params))
        total, _ = jax.lax.scan(accumulate, zeros, (windows, jax.random.split(dropout_key, A)))
        return jax.tree_util.tree_map(lambda t: t / A, total)  # (mean loss, mean gradient)

    def train_step(state: TrainState, windows: jax.Array) -> tuple[TrainState, jax.Array]:
        _, dropout_key = step_keys(config.seed, state.step)
        loss, grads = loss_and_grads(state.params, windows, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        bad = ~jnp.isfinite(loss) | ~all_finite(params)  # a NaN/inf gradient makes the AdamW update NaN too
        first_bad_step = jnp.where(bad & (state.first_bad_step < 0), state.step, state.first_bad_step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, first_bad_step=first_bad_step), loss

    def train_steps(state: TrainState, data: jax.Array) -> tuple[TrainState, jax.Array]:
        if host_windows:
            windows = data
        else:
            offsets = train_offsets(config.seed, state.step + jnp.arange(K), data.shape[0], A, B, T)  # (K, A, B)
            windows = jax.lax.with_sharding_constraint(gather_windows(data, offsets, T), placement.batch_along(2))
        if K == 1:
            return train_step(state, windows[0])
        state, losses = jax.lax.scan(train_step, state, windows)
        return state, losses[-1]

    data_sharding = placement.batch_along(2) if host_windows else placement.replicated
    return jax.jit(train_steps, in_shardings=(placement.state, data_sharding),
                   out_shardings=(placement.state, placement.replicated), donate_argnums=0)


def split_sums(logits: jax.Array, targets: jax.Array, counted: jax.Array, token_bytes: jax.Array) -> jax.Array:
    """(4,) float32 sums over the `counted` positions of logits (B, T, V) and targets (B, T): the loss, the
    tokens, the loss of the targets that stand for text bytes (not special tokens) and those bytes. They add up
    over batches into the mean loss (sum / tokens) and the bits per byte (sum / (ln 2 * bytes))."""
    losses = token_losses(logits, targets)  # (B, T)
    n_bytes = jnp.where(counted, token_bytes[targets], 0).astype(jnp.float32)  # (B, T)
    return jnp.stack([jnp.where(counted, losses, 0.0).sum(), counted.sum().astype(jnp.float32),
                      jnp.where(n_bytes > 0, losses, 0.0).sum(), n_bytes.sum()])


def loss_and_bpb(sums) -> tuple[float, float]:
    """(mean loss in nats per token, bits per UTF-8 byte) from `split_sums` added up."""
    loss_sum, tokens, byte_loss_sum, n_bytes = (float(v) for v in np.asarray(sums, np.float64))
    return loss_sum / tokens, byte_loss_sum / (math.log(2) * n_bytes) if n_bytes else math.nan


def make_split_sums(model: LanguageModel, placement: sharding.Placement) -> Callable:
    """params, windows (I, B, T + 1), counted (I, B, T), token_bytes (V,) -> `split_sums` over the I batches
    (dropout off), one compiled call; `counted` marks the positions whose target is scored."""

    @jax.jit
    def sums_of_batches(params, windows: jax.Array, counted: jax.Array, token_bytes: jax.Array) -> jax.Array:
        def add_batch(total, batch):
            windows, counted = batch
            x, y = placement.constrain_batch(windows[:, :-1], windows[:, 1:])  # (B, T) each
            return total + split_sums(model.apply({"params": params}, x), y, counted, token_bytes), None

        total, _ = jax.lax.scan(add_batch, jnp.zeros(4, jnp.float32), (windows, counted))
        return total

    return sums_of_batches


def whole_split_loss(sums_of_batches: Callable, params, tokens: np.ndarray, batch_size: int, block_size: int,
                     token_bytes: jax.Array, put: Callable = jnp.asarray) -> tuple[float, float]:
    """(mean loss, bits per byte) over the whole split `tokens` (N,), by `sums_of_batches` (`make_split_sums`):
    every token after the first is predicted once, from the tokens before it in its block_size window; windows are
    consecutive, up to FULL_EVAL_BATCHES batches of `batch_size` per compiled call (fewer for a short split), moved
    to the devices by `put`. Deterministic: no key."""
    B, T = batch_size, block_size
    n_windows = -(-(len(tokens) - 1) // T)
    batches = min(FULL_EVAL_BATCHES, -(-n_windows // B))  # per call
    total = np.zeros(4)
    for first in range(0, n_windows, batches * B):
        windows, counted = consecutive_windows(tokens, first, batches * B, T)  # (batches * B, T + 1), (.., T)
        windows, counted = put(windows.reshape(batches, B, T + 1)), put(counted.reshape(batches, B, T))
        total += np.asarray(sums_of_batches(params, windows, counted, token_bytes), np.float64)
    return loss_and_bpb(total)


def _draw_eval_windows(eval_iters: int, batch_size: int, block_size: int, data: jax.Array,
                       key: jax.Array) -> jax.Array:
    """(eval_iters, B, T + 1) random windows of the split `data` on the device (`data.eval_offsets`)."""
    return gather_windows(data, eval_offsets(key, data.shape[0], eval_iters, batch_size, block_size), block_size)


# steps_per_call=0 (the default) chooses from the model's size: about AUTO_CALL_FLOPS of training work per compiled
# call, at most AUTO_MAX_STEPS steps. Small models get several steps per call, which saves the per-call cost (the
# call itself, reading the state back, the loop's Python); large ones one, so that the progress bar and a stop
# signal stay responsive. Calibrated on a 2-core CPU (benchmarks/RESULTS.md, "Steps per call").
AUTO_CALL_FLOPS = 2e10
AUTO_MAX_STEPS = 10


def resolved_steps_per_call(config: TrainConfig, flops_per_step: float, start_step: int = 0) -> int:
    """The steps per compiled call: `steps_per_call`, or with 0 the automatic choice for `flops_per_step`; lowered
    as far as needed for evaluations and checkpoints (and the step resumed from) to fall between calls."""
    automatic = min(AUTO_MAX_STEPS, max(1, int(AUTO_CALL_FLOPS // max(flops_per_step, 1.0))))  # bigram: 0 FLOPs
    wanted = config.steps_per_call or automatic
    interval = math.gcd(config.eval_interval, config.max_iters, config.checkpoint_interval, start_step)
    return max(k for k in range(1, wanted + 1) if interval % k == 0)


def eval_steps(config: TrainConfig) -> list[int]:
    """Steps (optimizer updates done) after which the losses are estimated: 0 (with `eval_at_start`), every
    interval, and the last."""
    first = 0 if config.eval_at_start else config.eval_interval
    return sorted(set(range(first, config.max_iters, config.eval_interval)) | {config.max_iters})


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    dataset: Dataset
    config: TrainConfig  # with vocab_size set from the data
    history: list[dict[str, float]]
    interrupted: bool = False  # stopped early by a signal, after saving a checkpoint


def _quiet(_: str) -> None:
    """The log of processes other than 0."""


class Run:
    """One training run, built once from a config: the dataset, the device mesh and where each array lives on it,
    the model, the optimizer, the compiled train step and loss estimate, the train state and the checkpoints.

    `Run(config)` checks the run directory, builds everything and, with `config.resume`, restores the latest
    usable checkpoint. Then `fit()` trains to max_iters; `step()`, `evaluate()` and `save()` are its parts.
    Use it as a context manager (or call `close()`): checkpoints are written in the background until then.
    Sharded over all devices of all processes (`--fsdp`, `--multihost`); only process 0 logs and writes files
    other than checkpoints (orbax coordinates those).
    """

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print):
        sharding.initialize_distributed(config.multihost)
        self.is_main = sharding.is_main_process()
        self.log = log if self.is_main else _quiet
        start = pretrained.load(config.init_from) if config.init_from and not config.resume else None
        if start:  # (model config, params, tokenizer) of the weights; a resumed run continues from its checkpoint
            config = dataclasses.replace(config, model=pretrained.run_model(start[0], config.model))
        self.dataset = load_dataset(config.data_path, config.block_size)
        self._start_params = self._check_start(config, *start) if start else None  # until they are the state's
        self.config = config.for_vocab(self.dataset.tokenizer.vocab_size)
        self.mesh = sharding.make_mesh(config.fsdp)
        sharding.check_batch_size(config.batch_size, self.mesh)
        self.run_dir = RunDir(config.out_dir)
        if self.is_main:
            self.run_dir.acquire(self.log)  # the only writer from here on
        try:
            self._build(config)
        except BaseException:
            self._abandon()
            raise

    def _build(self, config: TrainConfig) -> None:
        self.checkpoints: RunCheckpoints | None = None
        self.run_dir.check_start(config.resume, config.overwrite)
        sharding.sync("out_dir checked")  # every process looks before process 0 writes
        if self.is_main:
            self.run_dir.create(config.overwrite)
        self.model, self.tx = build_model(self.config.model), make_optimizer(self.config)
        init, init_args = self._initial_state()
        self.placement = sharding.Placement.for_state(self.mesh, jax.eval_shape(init, *init_args))
        self.state: TrainState = jax.jit(init, out_shardings=self.placement.state)(*init_args)  # each its own slices
        self._start_params = None
        self.n_params = count_params(self.state.params)
        self.log(f"{self.n_params / 1e6:.6f} M parameters")
        state_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves((self.state.params, self.state.opt_state)))
        self.run_dir.check_free_space(state_bytes, copies=config.keep_checkpoints + 2)
        self.data_sha256 = self.dataset.fingerprint()
        self.checkpoints = RunCheckpoints(self.run_dir, config.keep_checkpoints)
        self.history: list[dict[str, float]] = []
        self.last_saved = self.checkpoints.latest_step()
        self.best_val_loss = self.checkpoints.best_val_loss()
        # The splits on the devices (the step draws its windows there), or a prepared dataset's memory-mapped
        # splits, whose windows the host gathers (jaxgpt.loader).
        self.host_batches = (HostBatches(self.config, self.placement, self.dataset.train, self.dataset.val)
                             if self.dataset.memory_mapped else None)
        self.device_splits = {} if self.host_batches else {
            "train": self.placement.replicate(self.dataset.train), "val": self.placement.replicate(self.dataset.val)}
        self._steps_done = 0  # the host's copy of state.step, so that a step does not wait to read the device's
        self.token_bytes = self.placement.replicate(self.dataset.tokenizer.token_bytes())
        self._split_sums = make_split_sums(self.model, self.placement)
        self._eval_windows = jax.jit(functools.partial(
            _draw_eval_windows, self.config.eval_iters, self.config.batch_size, self.config.block_size),
            out_shardings=self.placement.batch_along(1))
        # Compiled at the first step() for the steps per call that keep every evaluation and checkpoint from
        # there on a call boundary.
        self._train_step: Callable | None = None
        self.steps_per_call = resolved_steps_per_call(self.config, self.flops_per_step())
        if config.resume:
            self.restore()
        elif self.is_main:
            self._write_run_files()
        self._reset_clock()

    def _check_start(self, config: TrainConfig, weights: GPTConfig, params: dict, tokenizer: Tokenizer | None) -> dict:
        """The pretrained params to start from, once the data is found tokenized as the weights were."""
        pretrained.check_data_tokenizer(config.init_from, tokenizer, weights.vocab_size, config.data_path or "the data",
                                        self.dataset.tokenizer)
        cropped = f" (cropped from {weights.block_size})" if weights.block_size > config.block_size else ""
        self.log(f"starting from {config.init_from}: {weights.n_layer} layers, {weights.n_head} heads, n_embd "
                 f"{weights.n_embd}, block_size {config.block_size}{cropped}")
        return params

    def _initial_state(self) -> tuple[Callable[..., TrainState], tuple]:
        """The function that makes step 0's state, and its arguments: params drawn from the seed, or the pretrained
        ones (`config.init_from`) cut to block_size."""
        if self._start_params is None:
            key = stream_key(self.config.seed, INIT_STREAM)
            return lambda: TrainState.fresh(init_params(self.config.model, key), self.tx), ()
        params = pretrained.crop_block_size(self._start_params, self.config.model)
        return lambda params: TrainState.fresh(params, self.tx), (params,)

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
            if self.host_batches:
                self.host_batches.close()
            self.checkpoints.close()
        finally:
            self.run_dir.release()

    def _abandon(self) -> None:
        """After a failed start: release what was taken; an out_dir this run created and left empty goes too."""
        try:
            if self.checkpoints is not None:
                self.checkpoints.close()
        finally:
            self.run_dir.release(remove_if_unused=True)

    @property
    def step_count(self) -> int:
        """Optimizer steps done (reads the device's counter)."""
        return int(self.state.step)

    def compile(self) -> jax.stages.Compiled:
        """The train step compiled for the steps per call from the current step (once; `step()` calls it)."""
        if self._train_step is None:
            self.steps_per_call = resolved_steps_per_call(self.config, self.flops_per_step(), self.step_count)
            if self.host_batches:  # the first windows are gathered while the step compiles
                self.host_batches.prefetch(self._steps_done, self.steps_per_call)
            config = dataclasses.replace(self.config, steps_per_call=self.steps_per_call)
            train_step = make_train_step(config, self.model, self.tx, self.placement, bool(self.host_batches))
            self._train_step = train_step.lower(self.state, self._train_input(abstract=True)).compile()
            self._reset_clock()  # throughput counts from here, without the compilation
        return self._train_step

    def step(self) -> jax.Array:
        """`steps_per_call` optimizer steps in one compiled call; returns the last one's loss (still on device)."""
        train_step = self.compile()
        self.state, loss = train_step(self.state, self._train_input())
        self._steps_done += self.steps_per_call
        return loss

    def _reset_clock(self) -> None:
        self._clock = (time.perf_counter(), int(self.state.step))
        if self.host_batches:
            self.host_batches.wait_seconds = 0.0

    def data_wait(self) -> float | None:
        """The fraction of the time since the clock was last reset that the steps waited for host-gathered windows
        (None on the on-device path, which never waits)."""
        if not self.host_batches:
            return None
        return self.host_batches.wait_seconds / max(time.perf_counter() - self._clock[0], 1e-9)

    def tokens_per_sec(self) -> float | None:
        """Training throughput since the clock was last reset (at the first step and after each evaluation)."""
        seconds, steps = time.perf_counter() - self._clock[0], self.step_count - self._clock[1]
        return self.tokens_per_step * steps / seconds if steps else None

    @property
    def tokens_per_step(self) -> int:
        return self.config.grad_accum * self.config.batch_size * self.config.block_size

    def _train_input(self, abstract: bool = False) -> jax.Array | jax.ShapeDtypeStruct:
        """What the compiled step takes besides the state: the train split on the devices, or the windows of the
        next `steps_per_call` steps gathered on the host."""
        if not self.host_batches:
            return self.device_splits["train"]
        if abstract:
            c = self.config
            shape = (self.steps_per_call, c.grad_accum, c.batch_size, c.block_size + 1)
            return jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.placement.batch_along(2))
        return self.host_batches.train_windows(self._steps_done, self.steps_per_call)

    def sampled_loss(self, split: str, key: jax.Array) -> tuple[float, float]:
        """(mean loss, bits per byte) over `eval_iters` random batches of `split` ("train", "val") drawn with `key`."""
        windows = (self.host_batches.eval_windows(split, key) if self.host_batches
                   else self._eval_windows(self.device_splits[split], key))  # (eval_iters, B, T + 1)
        counted = jnp.ones(windows[..., 1:].shape, bool)
        return loss_and_bpb(self._split_sums(self.state.params, windows, counted, self.token_bytes))

    def full_loss(self, tokens: np.ndarray) -> tuple[float, float]:
        """(mean loss, bits per byte) over the whole split `tokens` (N,) in consecutive windows (`whole_split_loss`).
        Deterministic: no key."""
        return whole_split_loss(self._split_sums, self.state.params, tokens, self.config.batch_size,
                                self.config.block_size, self.token_bytes, self.placement.replicate)

    def evaluate(self) -> dict[str, float | None]:
        """Train and val loss at the current step, log and record them: `eval_iters` random batches each, or with
        `eval_mode="full"` the val loss over the whole val split (`full_loss`); the val loss also in bits per
        UTF-8 byte of text (`val_bpb`), which compares runs with different tokenizers."""
        self.raise_if_diverged()
        step, tokens_per_sec, data_wait = self.step_count, self.tokens_per_sec(), self.data_wait()
        train_key, val_key = eval_keys(self.config.seed, step)
        train_loss, _ = self.sampled_loss("train", train_key)
        val_loss, val_bpb = (self.full_loss(self.dataset.val) if self.config.eval_mode == "full"
                             else self.sampled_loss("val", val_key))
        record = {
            "step": step,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_bpb": val_bpb,
            "tokens_per_sec": tokens_per_sec,
            "data_wait": data_wait,
            "mfu": mfu(tokens_per_sec, *self._flops()) if tokens_per_sec else None,
            "learning_rate": float(learning_rate_schedule(self.config)(step)),
        }
        if not np.isfinite(record["train_loss"]):
            raise JaxgptError(f"loss became {record['train_loss']} at step {step}; "
                              "lower --learning_rate or set --grad_clip")
        self.history.append(record)
        if self.is_main:
            try:
                self.run_dir.append_metrics(record)
            except OSError as err:
                raise self.checkpoints.failure(f"writing {self.run_dir.metrics_file}", err) from None
        self.log(f"step {step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
        return record

    def flops_per_step(self) -> float:
        """Training FLOPs of one optimizer step (nanoGPT's estimate: 6N + 12LCT per token)."""
        return self.model.flops_per_token(self.n_params) * self.tokens_per_step

    def _flops(self) -> tuple[float, float | None]:
        """(training FLOPs per token, peak FLOP/s of all devices: --peak_flops or the known-devices table)."""
        peak = self.config.peak_flops
        if peak is None:
            per_device = device_peak_flops(jax.devices()[0], self.config.model.dtype)
            peak = per_device * jax.device_count() if per_device else None
        return self.model.flops_per_token(self.n_params), peak

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
            where = f"step {step} in {self.run_dir}"
            changed = resume_changes(TrainConfig.from_dict(meta["config"]), self.config, where)
            if meta["data_sha256"] != self.data_sha256:
                raise UsageError(f"cannot resume from {where}: the training text differs from the checkpoint's "
                                 "(sha256 mismatch); use the same --data_path")
            if changed:
                self.log(f"resuming with changed settings: {', '.join(changed)}")

        self._check_tokenizer_unchanged()
        restored = self.checkpoints.restore_latest(self.state.params, self.state.opt_state, self.log, check)
        self.checkpoints.discard_best_after(restored.step)
        self.best_val_loss = self.checkpoints.best_val_loss()
        self.history = [r for r in self.run_dir.read_metrics() if r["step"] <= restored.step]
        self.log(f"resuming from step {restored.step}")
        step = jax.device_put(jnp.int32(restored.step), self.state.step.sharding)
        self.state = self.state.replace(step=step, params=restored.params, opt_state=restored.opt_state)
        self.last_saved, self._train_step = restored.step, None  # recompiled for the steps per call from here
        self._steps_done = restored.step
        if self.is_main:
            self._write_run_files()

    def _check_tokenizer_unchanged(self) -> None:
        """A resumed run reads tokens of the tokenizer it was trained with (a clearer error than the data's sha256)."""
        saved, now = self.run_dir.read_tokenizer(), self.dataset.tokenizer
        if saved.fingerprint() != now.fingerprint():
            raise UsageError(f"cannot resume {self.run_dir}: it was trained on {describe(saved)}, but "
                             f"{self.config.data_path or 'the data'} holds {describe(now)}; resume with the data the "
                             "run was trained on, or start a new --out_dir")

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
        handler, see jaxgpt.interrupt) ended the run early, after a checkpoint of that step."""
        stop, config, step = stop or StopRequest(), self.config, self.step_count
        if step == 0 and not self.history and config.eval_at_start:
            self.evaluate()
        if step >= config.max_iters:
            self.log(f"step {step} is already max_iters {config.max_iters}: nothing to train "
                     "(raise --max_iters to go on)")
        evals = set(eval_steps(config))
        bar = tqdm(initial=step, total=config.max_iters, disable=not (config.progress and self.is_main),
                   dynamic_ncols=True, leave=False, file=sys.stderr)
        while step < config.max_iters and not stop.agreed(step):
            loss = self.step()
            step += self.steps_per_call
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
                self._reset_clock()
        bar.close()
        if step < config.max_iters and self.last_saved != step:
            self.save()
        return step < config.max_iters

    def sample_text(self, num_tokens: int) -> str:
        """`num_tokens` tokens (characters with the lecture's tokenizer) continuing `sample.default_prompt`: token 0,
        a newline in Shakespeare, as the lecture samples; the end-of-text token with BPE."""
        prompt = jnp.asarray([default_prompt(self.dataset.tokenizer)], jnp.int32)  # (1, 1)
        key = stream_key(self.config.seed, SAMPLE_STREAM)
        tokens = generate(self.config.model, self.state.params, prompt, num_tokens, key)
        return self.dataset.tokenizer.decode(tokens[0, 1:])


def train(config: TrainConfig, log: Callable[[str], None] = print, stop: StopRequest | None = None) -> TrainResult:
    """Run the lecture's training loop; writes config, tokenizer, metrics, checkpoints and plot to out_dir.

    With `config.resume`, continues the run in out_dir from its latest usable checkpoint. `stop` ends the run
    after the current step, with a checkpoint (see `Run.fit`).
    """
    with Run(config, log) as run:
        interrupted = run.fit(stop)
        if not interrupted and run.is_main and write_loss_plot(run.run_dir) is None:
            run.log("matplotlib is not installed: no loss plot (pip install 'jaxgpt[plot]')")
    if not interrupted and config.sample_chars:
        run.log(run.sample_text(config.sample_chars))
    return TrainResult(run.state, run.dataset, run.config, run.history, interrupted)


if __name__ == "__main__":  # `python -m jaxgpt.train`: the command line lives in jaxgpt/cli/train.py
    from jaxgpt.cli.train import entry_point

    entry_point()
