"""Train a GPT on a text file: `python -m jaxgpt.train --config=small [--field=value ...]`.

Every random draw derives from (seed, step): batches and dropout masks of step s come from
`fold_in(train_key, s)` inside the jitted step, so the same seed gives the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
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

from jaxgpt import checkpoint, sharding
from jaxgpt.cli import parse_train_args
from jaxgpt.config import TrainConfig
from jaxgpt.data import Dataset, get_batch, load_dataset
from jaxgpt.errors import JaxgptError, UsageError, run_cli
from jaxgpt.model import GPT, BigramLanguageModel, count_params
from jaxgpt.optim import learning_rate_schedule, make_optimizer
from jaxgpt.plot import write_loss_plot
from jaxgpt.sample import generate_for_run

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


def make_train_step(config: TrainConfig, model: nn.Module, tx: optax.GradientTransformation,
                    placement: sharding.Placement) -> Callable:
    """state, train_data -> (next state, loss): batch, forward, backward and AdamW update, one compiled call.

    The batch is drawn whole (the same on any mesh) and split over the data axes; the state keeps `placement`.
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
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss

    shardings = (placement.state, placement.replicated)
    return jax.jit(train_step, in_shardings=shardings, out_shardings=shardings, donate_argnums=0)


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


def eval_steps(config: TrainConfig) -> list[int]:
    """Steps (optimizer updates done) after which the losses are estimated: 0, every interval, and the last."""
    return sorted(set(range(0, config.max_iters, config.eval_interval)) | {config.max_iters})


def prepare_out_dir(config: TrainConfig) -> Path:
    out_dir = Path(config.out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not config.overwrite:
        raise UsageError(f"out_dir {str(out_dir)!r} is not empty; choose another --out_dir or pass --overwrite")
    sharding.sync("out_dir checked")  # every process looks before process 0 writes
    if not sharding.is_main_process():
        return out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.jsonl").write_text("")
    except OSError as err:
        raise UsageError(f"cannot write to out_dir {str(out_dir)!r}: {err.strerror}") from None
    return out_dir


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run the lecture's training loop; writes config, tokenizer, metrics, checkpoint and plot to out_dir.

    Sharded over all devices of all processes (`--fsdp`, `--multihost`); only process 0 logs and writes files.
    """
    sharding.initialize_distributed(config.multihost)
    main_process = sharding.is_main_process()
    log = log if main_process else _quiet
    dataset = load_dataset(config.data_path, config.block_size)
    model_config = dataclasses.replace(config.model, vocab_size=dataset.tokenizer.vocab_size)
    config = dataclasses.replace(config, model=model_config)
    mesh = sharding.make_mesh(config.fsdp)
    sharding.check_batch_size(config.batch_size, mesh)
    out_dir = prepare_out_dir(config)
    if main_process:
        config.save(out_dir / "config.json")
        dataset.tokenizer.save(out_dir / "tokenizer.json")

    model, tx = build_model(config), make_optimizer(config)
    init = functools.partial(init_state, config, model, tx)
    placement = sharding.Placement.for_state(mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=placement.state)()  # each device creates only its own slices
    log(f"{count_params(state.params) / 1e6:.6f} M parameters")
    train_data, val_data = placement.replicate(dataset.train), placement.replicate(dataset.val)
    train_step = make_train_step(config, model, tx, placement)
    estimate_loss = make_estimate_loss(config, model, placement)
    eval_key, lr_schedule = stream_key(config.seed, EVAL_STREAM), learning_rate_schedule(config)
    tokens_per_step = config.batch_size * config.block_size

    train_step = train_step.lower(state, train_data).compile()  # compile once, before the clock starts
    history: list[dict[str, float]] = []
    bar = tqdm(total=config.max_iters, disable=not (config.progress and main_process), dynamic_ncols=True,
               leave=False, file=sys.stderr)
    step = 0
    for target in eval_steps(config):
        tic, first = time.perf_counter(), step
        while step < target:
            state, loss = train_step(state, train_data)
            step += 1
            bar.update(1)
            if step % PROGRESS_EVERY == 0:  # reading the loss waits for the device: not every step
                rate = tokens_per_step * (step - first) / (time.perf_counter() - tic)
                bar.set_postfix(loss=f"{float(loss):.4f}", tok_s=f"{rate:,.0f}")
        jax.block_until_ready(state)
        seconds = time.perf_counter() - tic
        step_key = jax.random.fold_in(eval_key, step)
        record = {
            "step": step,
            "train_loss": float(estimate_loss(state.params, train_data, jax.random.fold_in(step_key, 0))),
            "val_loss": float(estimate_loss(state.params, val_data, jax.random.fold_in(step_key, 1))),
            "tokens_per_sec": tokens_per_step * (step - first) / seconds if step > first else None,
            "learning_rate": float(lr_schedule(step)),
        }
        if not np.isfinite(record["train_loss"]):
            raise JaxgptError(f"loss became {record['train_loss']} at step {step}; "
                              "lower --learning_rate or set --grad_clip")
        history.append(record)
        if main_process:
            with open(out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        bar.clear()
        log(f"step {step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
    bar.close()

    checkpoint.save_params(out_dir, state.params)  # every process: orbax coordinates multi-host saves
    if main_process and write_loss_plot(out_dir) is None:
        log("matplotlib is not installed: no loss plot (pip install 'jaxgpt[plot]')")
    if config.sample_chars:
        log(sample_text(config, state.params, dataset.tokenizer))
    return TrainResult(state, dataset, config, history)


def _quiet(_: str) -> None:
    """The log of processes other than 0."""


def sample_text(config: TrainConfig, params, tokenizer) -> str:
    """`sample_chars` characters continuing a newline, drawn with the run's sample key (as `jaxgpt.sample` does)."""
    prompt = jnp.asarray([tokenizer.encode("\n")], jnp.int32)
    tokens = generate_for_run(config, params, prompt, config.sample_chars, stream_key(config.seed, SAMPLE_STREAM))
    return tokenizer.decode(tokens[0, 1:])


def main(argv: list[str] | None = None) -> None:
    config = parse_train_args(sys.argv[1:] if argv is None else argv, prog="python -m jaxgpt.train",
                              description=__doc__.splitlines()[0])
    train(config)


if __name__ == "__main__":
    run_cli(main)
