"""The train step: `TrainState` and the compiled function that advances it by one or more optimizer steps.

Every random draw derives from (seed, step): batches and dropout masks of step s come from `step_keys(seed, s)`
inside the compiled step, so the same seed gives the same run, several steps per call change nothing, and a run
resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxgpt.core.config import TrainConfig
from jaxgpt.core.keys import step_keys
from jaxgpt.core.losses import cross_entropy
from jaxgpt.core.model import LanguageModel, mesh_context
from jaxgpt.data.batches import Batches, DeviceBatches
from jaxgpt.system.sharding import Placement


class Health(struct.PyTreeNode):
    """Training-health numbers the step keeps (`health_metrics`), read by the host at evaluations only."""

    grad_norm: jax.Array  # () float32: the last step's global gradient norm, before clipping
    clipped_steps: jax.Array  # () int32: steps whose gradient norm was above grad_clip, since this state was made
    update_ratio: dict[str, jax.Array]  # parameter group -> () float32: the last step's RMS(update) / RMS(params)

    @classmethod
    def fresh(cls, params) -> Health:
        return cls(grad_norm=jnp.zeros((), jnp.float32), clipped_steps=jnp.zeros((), jnp.int32),
                   update_ratio={group: jnp.zeros((), jnp.float32) for group in params})


class TrainState(struct.PyTreeNode):
    """What changes during training: the step count, parameters and optimizer state (checkpointed), and what the
    host checks (not checkpointed)."""

    step: jax.Array  # () int32
    params: Any
    opt_state: Any
    first_bad_step: jax.Array  # () int32: first step whose loss or params became non-finite; -1 while none
    health: Health

    @classmethod
    def fresh(cls, params, tx: optax.GradientTransformation) -> TrainState:
        """Step 0: `params` with a new optimizer state."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   first_bad_step=jnp.full((), -1, jnp.int32), health=Health.fresh(params))


def rms(tree) -> jax.Array:
    """() float32: the root mean square of every element of `tree`."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves)
                    / sum(leaf.size for leaf in leaves))


def step_health(health: Health, grads, params, new_params, grad_clip: float) -> Health:
    """`health` after one step: its gradient norm, whether clipping cut it (grad_clip > 0), and per top-level
    parameter group (the embeddings, each block, the final norm, the head) RMS(update) / RMS(params)."""
    grad_norm = optax.tree.norm(grads)
    clipped = (grad_norm > grad_clip) if grad_clip > 0 else jnp.zeros((), bool)
    ratio = {group: rms(jax.tree.map(jnp.subtract, new_params[group], params[group]))
             / jnp.maximum(rms(params[group]), jnp.finfo(jnp.float32).tiny) for group in params}
    return Health(grad_norm=grad_norm, clipped_steps=health.clipped_steps + clipped, update_ratio=ratio)


def all_finite(tree) -> jax.Array:
    """() bool: no NaN or inf in any leaf of `tree`."""
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(tree)]).all()


def make_train_step(config: TrainConfig, model: LanguageModel, tx: optax.GradientTransformation,
                    placement: Placement, batches: Batches | None = None, steps: int | None = None) -> Callable:
    """state, step_input -> (state, loss): `steps` times (default: `config.steps_per_call`, at least once) batch,
    forward, backward and optimizer update.

    `step_input` is what `batches` (default: `DeviceBatches`, given the train split (N,) on the devices) hands
    the step; `batches.windows` turns it into the steps' windows (K, A, B, T + 1) inside the step, whether drawn
    there or gathered on the host: the same windows either way (jaxgpt.data.batches).

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
    K, A = steps or max(config.steps_per_call, 1), config.grad_accum
    batches = batches or DeviceBatches(config, placement)

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
        health = (step_health(state.health, grads, state.params, params, config.grad_clip)
                  if config.health_metrics else state.health)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state, first_bad_step=first_bad_step,
                             health=health), loss

    def train_steps(state: TrainState, step_input: jax.Array) -> tuple[TrainState, jax.Array]:
        windows = batches.windows(step_input, state.step + jnp.arange(K))  # (K, A, B, T + 1)
        with mesh_context(model, placement.mesh):
            if K == 1:
                return train_step(state, windows[0])
            state, losses = jax.lax.scan(train_step, state, windows)
        return state, losses[-1]

    return jax.jit(train_steps, in_shardings=(placement.state, batches.input_sharding),
                   out_shardings=(placement.state, placement.replicated), donate_argnums=0)


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
