"""Train a GPT on a text file: `python -m jaxgpt.train --config=small [--field=value ...]`.

Every random draw derives from (seed, step): batches and dropout masks of step s come from
`fold_in(train_key, s)` inside the jitted step, so the same seed gives the same run, and a run resumed
from a checkpoint (`--resume`) continues exactly as if it had never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from tqdm.auto import tqdm

from jaxgpt import checkpoint, compile_cache, sharding
from jaxgpt.cli import parse_train_args
from jaxgpt.config import TrainConfig
from jaxgpt.data import Dataset, get_batch, load_dataset
from jaxgpt.errors import JaxgptError, UsageError, run_cli
from jaxgpt.interrupt import StopRequest, stop_on_signals
from jaxgpt.mfu import device_peak_flops, flops_per_token, mfu
from jaxgpt.model import GPT, BigramLanguageModel, count_params, resolve_dtype
from jaxgpt.optim import learning_rate_schedule, make_optimizer
from jaxgpt.plot import read_metrics, write_loss_plot
from jaxgpt.sample import generate_for_run

# Independent streams derived from the seed.
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM, SAMPLE_STREAM = range(4)
PROGRESS_EVERY = 50  # steps between progress-bar loss readings


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


def build_model(config: TrainConfig) -> nn.Module:
    if config.model_type == "bigram":
        return BigramLanguageModel(config.model.vocab_size)
    return GPT(config.model)


def stream_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def init_state(config: TrainConfig, model: nn.Module, tx: optax.GradientTransformation) -> TrainState:
    dummy = jnp.zeros((1, config.block_size), jnp.int32)
    params = model.init(stream_key(config.seed, INIT_STREAM), dummy)["params"]
    return TrainState.fresh(params, tx)


def for_dataset(config: TrainConfig, dataset: Dataset) -> TrainConfig:
    """`config` with the model's vocab_size taken from the dataset's tokenizer and dtype "auto" resolved."""
    model_config = dataclasses.replace(config.model, vocab_size=dataset.tokenizer.vocab_size,
                                       dtype=resolve_dtype(config.model.dtype))
    return dataclasses.replace(config, model=model_config)


def build_run(config: TrainConfig, mesh: jax.sharding.Mesh) -> tuple[nn.Module, optax.GradientTransformation,
                                                                     sharding.Placement, TrainState]:
    """The model, optimizer, placement on `mesh` and step-0 train state of a config resolved by `for_dataset`."""
    model, tx = build_model(config), make_optimizer(config)
    init = functools.partial(init_state, config, model, tx)
    placement = sharding.Placement.for_state(mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=placement.state)()  # each device creates only its own slices
    return model, tx, placement, state


def all_finite(tree) -> jax.Array:
    """() bool: no NaN or inf in any leaf of `tree`."""
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(tree)]).all()


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy, as F.cross_entropy on (B*T, V), computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()


def make_train_step(config: TrainConfig, model: nn.Module, tx: optax.GradientTransformation,
                    placement: sharding.Placement) -> Callable:
    """state, train_data -> (state, loss): `steps_per_call` times batch, forward, backward and AdamW update.

    One compiled call; several steps run in a `lax.scan` (less dispatch overhead), each with the keys of its
    own step, so the result is the same as calling a one-step function that many times. `loss` is the last step's.
    The batch is drawn whole (the same on any mesh) and split over the data axes; the state keeps `placement`.

    The first step whose loss or updated params are not finite is recorded in `first_bad_step`, which the
    host reads only where it waits for the device anyway (progress, evaluation, checkpoints) and before any
    save: a diverged state is never written. Checking the params covers the gradients: AdamW turns a NaN or
    inf gradient into a NaN update.
    """

    def loss_fn(params, x, y, dropout_key):
        logits = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
        return cross_entropy(logits, y)

    def train_step(state: TrainState, train_data: jax.Array) -> tuple[TrainState, jax.Array]:
        train_key = stream_key(config.seed, TRAIN_STREAM)
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(train_key, state.step))
        x, y = get_batch(batch_key, train_data, config.batch_size, config.block_size)  # (B, T) each
        x, y = placement.constrain_batch(x, y)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        bad = ~jnp.isfinite(loss) | ~all_finite(params)  # a NaN/inf gradient makes the AdamW update NaN too
        first_bad_step = jnp.where(bad & (state.first_bad_step < 0), state.step, state.first_bad_step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, first_bad_step=first_bad_step), loss

    def train_steps(state: TrainState, train_data: jax.Array) -> tuple[TrainState, jax.Array]:
        if config.steps_per_call == 1:
            return train_step(state, train_data)
        state, losses = jax.lax.scan(lambda s, _: train_step(s, train_data), state, length=config.steps_per_call)
        return state, losses[-1]

    shardings = (placement.state, placement.replicated)
    return jax.jit(train_steps, in_shardings=shardings, out_shardings=shardings, donate_argnums=0)


def make_estimate_loss(config: TrainConfig, model: nn.Module, placement: sharding.Placement) -> Callable:
    """params, data, key -> mean loss over `eval_iters` random batches (dropout off), one compiled call."""

    @jax.jit
    def estimate_loss(params, data: jax.Array, key: jax.Array) -> jax.Array:
        def batch_loss(_, batch_key):
            x, y = placement.constrain_batch(*get_batch(batch_key, data, config.batch_size, config.block_size))
            return None, cross_entropy(model.apply({"params": params}, x), y)

        _, losses = jax.lax.scan(batch_loss, None, jax.random.split(key, config.eval_iters))
        return losses.mean()

    return estimate_loss


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    dataset: Dataset
    config: TrainConfig  # with vocab_size set from the data
    history: list[dict[str, float]]
    interrupted: bool = False  # stopped early by a signal, after saving a checkpoint


def resolved_steps_per_call(config: TrainConfig, start_step: int = 0) -> int:
    """The most steps per compiled call, up to `steps_per_call`, that evaluations and checkpoints still fall between."""
    interval = math.gcd(config.eval_interval, config.max_iters, config.checkpoint_interval, start_step)
    return max(k for k in range(1, config.steps_per_call + 1) if interval % k == 0)


def run_flops(config: TrainConfig, n_params: int) -> tuple[float, float | None]:
    """(training FLOPs per token, peak FLOP/s of the devices: --peak_flops or the known-devices table)."""
    if config.model_type == "bigram":
        return 0.0, None  # a table lookup: no matmuls
    peak = config.peak_flops
    if peak is None:
        per_device = device_peak_flops(jax.devices()[0], config.model.dtype)
        peak = per_device * jax.device_count() if per_device else None
    return flops_per_token(config.model, n_params), peak


def eval_steps(config: TrainConfig) -> list[int]:
    """Steps (optimizer updates done) after which the losses are estimated: 0, every interval, and the last."""
    return sorted(set(range(0, config.max_iters, config.eval_interval)) | {config.max_iters})


def prepare_out_dir(config: TrainConfig) -> Path:
    """Check out_dir before any work: resumable (--resume), empty, or cleared of a previous run (--overwrite)."""
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"out_dir {str(out_dir)!r} is a file; choose a directory")
    if config.resume:
        if not (out_dir / checkpoint.CHECKPOINTS_DIR).is_dir():
            raise UsageError(f"nothing to resume in {str(out_dir)!r}: it has no {checkpoint.CHECKPOINTS_DIR}/; "
                             "start without --resume")
    elif out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:
        raise UsageError(f"out_dir {str(out_dir)!r} is not empty; choose another --out_dir, pass --resume to "
                         "continue its run or --overwrite to replace it")
    sharding.sync("out_dir checked")  # every process looks before process 0 writes
    if not sharding.is_main_process():
        return out_dir
    if config.overwrite and out_dir.is_dir():
        checkpoint.remove_run(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise UsageError(f"cannot write to out_dir {str(out_dir)!r}: {err.strerror}") from None
    return out_dir


def write_metrics(out_dir: Path, records: list[dict]) -> None:
    """Replace metrics.jsonl with `records`, atomically."""
    tmp = out_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, out_dir / "metrics.jsonl")


def saved_config(config: TrainConfig) -> TrainConfig:
    """The config as written to config.json and checkpoints: without the one-off --resume/--overwrite."""
    return dataclasses.replace(config, resume=False, overwrite=False)


def resume_state(config: TrainConfig, state: TrainState, checkpoints: checkpoint.RunCheckpoints,
                 data_sha256: str, log: Callable[[str], None]) -> tuple[TrainState, list[dict]]:
    """The state of the latest usable checkpoint, checked against config and data; metrics after it dropped."""

    def check(step: int, meta: dict) -> None:
        where = f"step {step} in {checkpoints.out_dir}"
        changed = checkpoint.check_resume_config(TrainConfig.from_dict(meta["config"]), config, where)
        if meta["data_sha256"] != data_sha256:
            raise UsageError(f"cannot resume from {where}: the training text differs from the checkpoint's "
                             "(sha256 mismatch); use the same --data_path")
        if changed:
            log(f"resuming with changed settings: {', '.join(changed)}")

    restored = checkpoints.restore_latest(state.params, state.opt_state, log, check)
    checkpoints.discard_best_after(restored.step)
    history = [r for r in read_metrics(checkpoints.out_dir) if r["step"] <= restored.step]
    log(f"resuming from step {restored.step}")
    step = jax.device_put(jnp.int32(restored.step), state.step.sharding)
    return state.replace(step=step, params=restored.params, opt_state=restored.opt_state), history


def raise_if_diverged(state: TrainState, checkpoints: checkpoint.RunCheckpoints, last_saved: int | None) -> None:
    """Stop with a clear error once a step went non-finite (reads one scalar: waits for the device)."""
    bad = int(state.first_bad_step)
    if bad >= 0:
        then = "--resume" if last_saved is not None else "start again with --overwrite"
        kept = (f"the latest checkpoint is still step {last_saved} in {checkpoints.out_dir}"
                if last_saved is not None else "no checkpoint was written")
        raise JaxgptError(f"training diverged: the loss or parameters became non-finite at step {bad}; {kept}; "
                          f"lower --learning_rate or set --grad_clip, then {then}")


def train(config: TrainConfig, log: Callable[[str], None] = print, stop: StopRequest | None = None) -> TrainResult:
    """Run the lecture's training loop; writes config, tokenizer, metrics, checkpoints and plot to out_dir.

    With `config.resume`, continues the run in out_dir from its latest usable checkpoint. `stop` (set by a
    signal handler, see jaxgpt.interrupt) ends the run after the current step, with a checkpoint.
    Sharded over all devices of all processes (`--fsdp`, `--multihost`); only process 0 logs and writes files
    (checkpoints are written by all: orbax coordinates them).
    """
    sharding.initialize_distributed(config.multihost)
    main_process = sharding.is_main_process()
    log = log if main_process else _quiet
    stop = stop or StopRequest()
    dataset = load_dataset(config.data_path, config.block_size)
    config = for_dataset(config, dataset)
    mesh = sharding.make_mesh(config.fsdp)
    sharding.check_batch_size(config.batch_size, mesh)
    out_dir = prepare_out_dir(config)

    model, tx, placement, state = build_run(config, mesh)
    log(f"{count_params(state.params) / 1e6:.6f} M parameters")
    checkpoint.check_free_space(out_dir, (state.params, state.opt_state), copies=config.keep_checkpoints + 2)
    data_sha256 = checkpoint.data_fingerprint(dataset.train, dataset.val)
    with checkpoint.RunCheckpoints(out_dir, config.keep_checkpoints) as checkpoints:
        history: list[dict[str, float]] = []
        if config.resume:
            state, history = resume_state(config, state, checkpoints, data_sha256, log)
        if main_process:
            write_metrics(out_dir, history)  # on resume: without the evaluations after the checkpoint
            saved_config(config).save(out_dir / "config.json")
            dataset.tokenizer.save(out_dir / "tokenizer.json")
        state, interrupted = train_loop(config, model, tx, placement, state, dataset, checkpoints, history,
                                        data_sha256, stop, log)

    if interrupted:
        return TrainResult(state, dataset, config, history, interrupted=True)
    if main_process and write_loss_plot(out_dir) is None:
        log("matplotlib is not installed: no loss plot (pip install 'jaxgpt[plot]')")
    if config.sample_chars:
        log(sample_text(config, state.params, dataset.tokenizer))
    return TrainResult(state, dataset, config, history)


def train_loop(config: TrainConfig, model: nn.Module, tx: optax.GradientTransformation,
               placement: sharding.Placement, state: TrainState, dataset: Dataset,
               checkpoints: checkpoint.RunCheckpoints, history: list[dict], data_sha256: str, stop: StopRequest,
               log: Callable[[str], None]) -> tuple[TrainState, bool]:
    """Train from state.step to max_iters, evaluating, logging and checkpointing; appends to `history`.

    Returns the final state and whether `stop` ended the loop early (after a checkpoint of that step)."""
    out_dir, main_process = checkpoints.out_dir, sharding.is_main_process()
    config = dataclasses.replace(config, steps_per_call=resolved_steps_per_call(config, int(state.step)))
    k = config.steps_per_call
    model_flops, peak_flops = run_flops(config, count_params(state.params))
    train_data, val_data = placement.replicate(dataset.train), placement.replicate(dataset.val)
    train_step = make_train_step(config, model, tx, placement)
    estimate_loss = make_estimate_loss(config, model, placement)
    eval_key, lr_schedule = stream_key(config.seed, EVAL_STREAM), learning_rate_schedule(config)
    tokens_per_step = config.batch_size * config.block_size
    meta = {"seed": config.seed, "config": saved_config(config).to_dict(), "data_sha256": data_sha256}
    last_saved, best_val_loss = checkpoints.latest_step(), checkpoints.best_val_loss()

    def evaluate(step: int, steps_timed: int, seconds: float) -> dict:
        raise_if_diverged(state, checkpoints, last_saved)
        step_key = jax.random.fold_in(eval_key, step)
        record = {
            "step": step,
            "train_loss": float(estimate_loss(state.params, train_data, jax.random.fold_in(step_key, 0))),
            "val_loss": float(estimate_loss(state.params, val_data, jax.random.fold_in(step_key, 1))),
            "tokens_per_sec": tokens_per_step * steps_timed / seconds if steps_timed else None,
            "mfu": mfu(tokens_per_step * steps_timed / seconds, model_flops, peak_flops) if steps_timed else None,
            "learning_rate": float(lr_schedule(step)),
        }
        if not np.isfinite(record["train_loss"]):
            raise JaxgptError(f"loss became {record['train_loss']} at step {step}; "
                              "lower --learning_rate or set --grad_clip")
        history.append(record)
        if main_process:
            with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        log(f"step {step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
        return record

    def save(step: int) -> None:
        raise_if_diverged(state, checkpoints, last_saved)  # nothing non-finite becomes the latest checkpoint
        val_loss = history[-1]["val_loss"] if history else None
        checkpoints.save(step, state.params, state.opt_state, {**meta, "step": step, "val_loss": val_loss})

    train_step = train_step.lower(state, train_data).compile()  # compile once, before the clock starts
    step = int(state.step)
    if step == 0 and not config.resume:
        evaluate(0, 0, 0.0)
    if step >= config.max_iters:
        log(f"step {step} is already max_iters {config.max_iters}: nothing to train (raise --max_iters to go on)")
    evals = set(eval_steps(config))
    bar = tqdm(initial=step, total=config.max_iters, disable=not (config.progress and main_process),
               dynamic_ncols=True, leave=False, file=sys.stderr)
    tic, first = time.perf_counter(), step
    while step < config.max_iters and not stop.agreed(step):
        state, loss = train_step(state, train_data)
        step += k
        bar.update(k)
        if step % PROGRESS_EVERY < k:  # reading the loss waits for the device: not every step
            raise_if_diverged(state, checkpoints, last_saved)
            rate = tokens_per_step * (step - first) / (time.perf_counter() - tic)
            bar.set_postfix(loss=f"{float(loss):.4f}", tok_s=f"{rate:,.0f}")
        if step in evals:
            jax.block_until_ready(state)
            bar.clear()
            record = evaluate(step, step - first, time.perf_counter() - tic)
            if record["val_loss"] < best_val_loss:
                best_val_loss = record["val_loss"]
                checkpoints.save_best(step, state.params, {**meta, "step": step, "val_loss": best_val_loss})
        if step % config.checkpoint_interval == 0 or step == config.max_iters:
            save(step)
            last_saved = step
        if step in evals:
            tic, first = time.perf_counter(), step
    bar.close()
    interrupted = step < config.max_iters
    if interrupted and last_saved != step:
        save(step)
    return state, interrupted


def _quiet(_: str) -> None:
    """The log of processes other than 0."""


def sample_text(config: TrainConfig, params, tokenizer) -> str:
    """`sample_chars` characters continuing token 0 (a newline in Shakespeare), as the lecture samples."""
    prompt = jnp.zeros((1, 1), jnp.int32)
    tokens = generate_for_run(config, params, prompt, config.sample_chars, stream_key(config.seed, SAMPLE_STREAM))
    return tokenizer.decode(tokens[0, 1:])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    options = {"prog": "python -m jaxgpt.train", "description": __doc__.splitlines()[0]}
    config = parse_train_args(argv, **options)
    compile_cache.enable_default()
    run_config = Path(config.out_dir) / "config.json"
    if config.resume and run_config.is_file() and not any(arg.startswith("--config") for arg in argv):
        config = parse_train_args([f"--config={run_config}", *argv], **options)  # the run's own config + new flags
    with stop_on_signals() as stop:
        result = train(config, stop=stop)
    if result.interrupted:
        if sharding.is_main_process():
            print(f"interrupted at step {int(result.state.step)}, checkpoint saved; resume with: python -m "
                  f"jaxgpt.train --out_dir={shlex.quote(config.out_dir)} --resume", file=sys.stderr)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    run_cli(main)
