"""Every random draw of a run derives from its seed: one stream per purpose, then the step.

The batch and dropout masks of step s come from `step_keys(seed, s)`, the evaluation batches at step s from
`eval_keys(seed, s)`. Both data paths (tokens on the device, or gathered on the host from a prepared dataset)
draw their windows from these keys, which is why they train on the same batches, and why a resumed run equals an
uninterrupted one bit for bit.
"""

from __future__ import annotations

import jax

# Independent streams derived from the seed.
INIT_STREAM, TRAIN_STREAM, EVAL_STREAM, SAMPLE_STREAM = range(4)


def stream_key(seed: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), stream)


def step_keys(seed: int, step: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """(batch key, dropout key) of training step `step` (jittable: `step` may be traced)."""
    batch_key, dropout_key = jax.random.split(jax.random.fold_in(stream_key(seed, TRAIN_STREAM), step))
    return batch_key, dropout_key


def eval_keys(seed: int, step: int) -> tuple[jax.Array, jax.Array]:
    """(train split key, val split key) of the loss estimate after `step` optimizer steps."""
    step_key = jax.random.fold_in(stream_key(seed, EVAL_STREAM), step)
    return jax.random.fold_in(step_key, 0), jax.random.fold_in(step_key, 1)
