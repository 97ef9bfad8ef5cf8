"""Train a GPT on a text file: `python -m jaxgpt.train --config=small [--field=value ...]`.

Every random draw derives from (seed, step): batches and dropout masks of step s come from
`fold_in(train_key, s)` inside the jitted step, so the same seed gives the same run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
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

from jaxgpt import checkpoint
from jaxgpt.cli import parse_train_args
from jaxgpt.config import TrainConfig
from jaxgpt.data import Dataset, get_batch, load_dataset
from jaxgpt.errors import JaxgptError, UsageError, run_cli
from jaxgpt.mfu import device_peak_flops, flops_per_token, mfu
from jaxgpt.model import GPT, BigramLanguageModel, count_params, resolve_dtype
from jaxgpt.optim import learning_rate_schedule, make_optimizer
from jaxgpt.plot import write_loss_plot
from jaxgpt.sample import generate_with_model

# Independent streams derived from the seed.
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM, SAMPLE_STREAM = range(4)
PROGRESS_EVERY = 50  # steps between progress-bar loss readings


class TrainState(struct.PyTreeNode):
    """What changes during training: the step count, parameters and optimizer state."""

    step: jax.Array  # () int32
    params: Any
    opt_state: Any


def build_model(config: TrainConfig) -> nn.Module:
    if config.model_type == "bigram":
        return BigramLanguageModel(config.model.vocab_size)
    return GPT(config.model)


def stream_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def init_state(config: TrainConfig, model: nn.Module, tx: optax.GradientTransformation) -> TrainState:
    dummy = jnp.zeros((1, config.block_size), jnp.int32)
    params = model.init(stream_key(config.seed, INIT_STREAM), dummy)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy, as F.cross_entropy on (B*T, V), computed in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()


def make_train_step(config: TrainConfig, model: nn.Module, tx: optax.GradientTransformation) -> Callable:
    """state, train_data -> (state, loss): `steps_per_call` times batch, forward, backward and AdamW update.

    One compiled call; several steps run in a `lax.scan` (less dispatch overhead), each with the keys of its
    own step, so the result is the same as calling a one-step function that many times. `loss` is the last step's.
    """
    train_key = stream_key(config.seed, TRAIN_STREAM)

    def loss_fn(params, x, y, dropout_key):
        logits = model.apply({"params": params}, x, deterministic=False, rngs={"dropout": dropout_key})
        return cross_entropy(logits, y)

    def train_step(state: TrainState, train_data: jax.Array) -> tuple[TrainState, jax.Array]:
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(train_key, state.step))
        x, y = get_batch(batch_key, train_data, config.batch_size, config.block_size)  # (B, T) each
        loss, grads = jax.value_and_grad(loss_fn)(state.params, x, y, dropout_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss

    def train_steps(state: TrainState, train_data: jax.Array) -> tuple[TrainState, jax.Array]:
        if config.steps_per_call == 1:
            return train_step(state, train_data)
        state, losses = jax.lax.scan(lambda s, _: train_step(s, train_data), state, length=config.steps_per_call)
        return state, losses[-1]

    return jax.jit(train_steps, donate_argnums=0)


def make_estimate_loss(config: TrainConfig, model: nn.Module) -> Callable:
    """params, data, key -> mean loss over `eval_iters` random batches (dropout off), one compiled call."""

    @jax.jit
    def estimate_loss(params, data: jax.Array, key: jax.Array) -> jax.Array:
        def batch_loss(_, batch_key):
            x, y = get_batch(batch_key, data, config.batch_size, config.block_size)
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


def resolved_steps_per_call(config: TrainConfig) -> int:
    """The most steps per compiled call, up to `config.steps_per_call`, that evaluations still fall between."""
    interval = math.gcd(config.eval_interval, config.max_iters)
    return max(k for k in range(1, config.steps_per_call + 1) if interval % k == 0)


def eval_steps(config: TrainConfig) -> list[int]:
    """Steps (optimizer updates done) after which the losses are estimated: 0, every interval, and the last."""
    return sorted(set(range(0, config.max_iters, config.eval_interval)) | {config.max_iters})


def prepare_out_dir(config: TrainConfig) -> Path:
    out_dir = Path(config.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:
        raise UsageError(f"out_dir {str(out_dir)!r} is not empty; choose another --out_dir or pass --overwrite")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").write_text("")
    except OSError as err:
        raise UsageError(f"cannot write to out_dir {str(out_dir)!r}: {err.strerror}") from None
    return out_dir


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run the lecture's training loop; writes config, tokenizer, metrics, checkpoint and plot to out_dir."""
    dataset = load_dataset(config.data_path, config.block_size)
    model_config = dataclasses.replace(config.model, vocab_size=dataset.tokenizer.vocab_size,
                                       dtype=resolve_dtype(config.model.dtype))
    config = dataclasses.replace(config, model=model_config, steps_per_call=resolved_steps_per_call(config))
    out_dir = prepare_out_dir(config)
    config.save(out_dir / "config.json")
    dataset.tokenizer.save(out_dir / "tokenizer.json")

    model, tx = build_model(config), make_optimizer(config)
    state = init_state(config, model, tx)
    log(f"{count_params(state.params) / 1e6:.6f} M parameters")
    model_flops, peak_flops = run_flops(config, count_params(state.params))
    train_data, val_data = jnp.asarray(dataset.train), jnp.asarray(dataset.val)
    train_step, estimate_loss = make_train_step(config, model, tx), make_estimate_loss(config, model)
    eval_key, lr_schedule = stream_key(config.seed, EVAL_STREAM), learning_rate_schedule(config)
    tokens_per_step, k = config.batch_size * config.block_size, config.steps_per_call

    train_step = train_step.lower(state, train_data).compile()  # compile once, before the clock starts
    history: list[dict[str, float]] = []
    bar = tqdm(total=config.max_iters, disable=not config.progress, dynamic_ncols=True, leave=False, file=sys.stderr)
    step = 0
    for target in eval_steps(config):
        tic, first = time.perf_counter(), step
        while step < target:
            state, loss = train_step(state, train_data)
            step += k
            bar.update(k)
            if step % PROGRESS_EVERY < k:  # reading the loss waits for the device: not every step
                rate = tokens_per_step * (step - first) / (time.perf_counter() - tic)
                bar.set_postfix(loss=f"{float(loss):.4f}", tok_s=f"{rate:,.0f}")
        jax.block_until_ready(state)
        seconds = time.perf_counter() - tic
        tokens_per_sec = tokens_per_step * (step - first) / seconds if step > first else None
        step_key = jax.random.fold_in(eval_key, step)
        record = {
            "step": step,
            "train_loss": float(estimate_loss(state.params, train_data, jax.random.fold_in(step_key, 0))),
            "val_loss": float(estimate_loss(state.params, val_data, jax.random.fold_in(step_key, 1))),
            "tokens_per_sec": tokens_per_sec,
            "mfu": mfu(tokens_per_sec, model_flops, peak_flops) if tokens_per_sec else None,
            "learning_rate": float(lr_schedule(step)),
        }
        if not np.isfinite(record["train_loss"]):
            raise JaxgptError(f"loss became {record['train_loss']} at step {step}; "
                              "lower --learning_rate or set --grad_clip")
        history.append(record)
        with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        bar.clear()
        log(f"step {step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
            + (f" ({speed_summary(record)})" if tokens_per_sec else ""))
    bar.close()

    checkpoint.save_params(out_dir, state.params)
    plot_path = write_loss_plot(out_dir)
    if plot_path is None:
        log("matplotlib is not installed: no loss plot (pip install 'jaxgpt[plot]')")
    if config.sample_chars:
        log(sample_text(config, model, state.params, dataset.tokenizer))
    return TrainResult(state, dataset, config, history)


def run_flops(config: TrainConfig, n_params: int) -> tuple[float, float | None]:
    """(training FLOPs per token, peak FLOP/s of the devices: --peak_flops or the known-devices table)."""
    if config.model_type == "bigram":
        return 0.0, None  # a table lookup: no matmuls
    peak = config.peak_flops
    if peak is None:
        per_device = device_peak_flops(jax.devices()[0], config.model.dtype)
        peak = per_device * jax.device_count() if per_device else None
    return flops_per_token(config.model, n_params), peak


def speed_summary(record: dict[str, Any]) -> str:
    """`123,456 tok/s, MFU 12.3%` (MFU only when the peak is known)."""
    text = f"{record['tokens_per_sec']:,.0f} tok/s"
    return text + (f", MFU {100 * record['mfu']:.1f}%" if record["mfu"] is not None else "")


def sample_text(config: TrainConfig, model: nn.Module, params, tokenizer) -> str:
    """`sample_chars` characters continuing a newline, drawn with the run's sample key."""
    prompt = jnp.asarray([tokenizer.encode("\n")], jnp.int32)
    tokens = generate_with_model(model, params, prompt, config.sample_chars, stream_key(config.seed, SAMPLE_STREAM),
                                 block_size=config.block_size, vocab_size=tokenizer.vocab_size)
    return tokenizer.decode(tokens[0, 1:])


def main(argv: list[str] | None = None) -> None:
    config = parse_train_args(sys.argv[1:] if argv is None else argv, prog="python -m jaxgpt.train",
                              description=__doc__.splitlines()[0])
    train(config)


if __name__ == "__main__":
    run_cli(main)
