"""How far the rolling KV cache's next-token distributions drift from the recompute path's, on a trained model.

    python benchmarks/rolling_drift.py [--config=small] [--max_iters=3000] [--out_dir=RUN] [--streams=64]
                                       [--windows=8]

Trains `--config` with RoPE on tiny Shakespeare for `--max_iters` steps in a temporary directory (or loads
`--out_dir`, a RoPE run), then feeds `--streams` validation passages, evenly spaced, of block_size x (windows + 1)
characters to both modes of `generate` beyond block_size, with the same context:

- recompute (the default, the lecture's semantics): the model rerun on the last block_size characters;
- rolling: one character per step from the passage start into the ring-buffer KV cache (decode="rolling").

For every position, p = recompute's next-character distribution, q = rolling's. By how many characters the
window has dropped (position - block_size + 1), it prints the mean and max KL(p || q) and total variation
0.5 * sum |p - q|, how often the most likely character agrees, and each mode's loss on the true next character.
Within block_size the two must agree up to float32 rounding: the first row checks that.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.core.config import GPTConfig, load_config
from jaxgpt.core.model import GPT
from jaxgpt.data.text import load_dataset
from jaxgpt.run.training import train
from jaxgpt.store import checkpoint


def trained_rope_model(config_name: str, max_iters: int) -> tuple[GPTConfig, dict, np.ndarray]:
    """(model config, params, val tokens) of `config_name` with RoPE, trained for max_iters steps."""
    base = load_config(config_name)
    with tempfile.TemporaryDirectory() as out_dir:
        config = dataclasses.replace(base, model=dataclasses.replace(base.model, position="rope"), out_dir=out_dir,
                                     max_iters=max_iters, eval_interval=max_iters, progress=False, sample_chars=0)
        tic = time.perf_counter()
        result = train(config, log=lambda _: None)
    print(f"trained {config_name} with RoPE for {max_iters} steps in {time.perf_counter() - tic:.0f} s: val loss "
          f"{result.history[-1]['val_loss']:.3f}")
    return result.config.model, result.state.params, np.asarray(result.dataset.val)


def loaded_rope_model(out_dir: str) -> tuple[GPTConfig, dict, np.ndarray]:
    config, params, _ = checkpoint.load(out_dir)
    if config.model.position != "rope":
        raise SystemExit(f"{out_dir} has position={config.model.position!r}; the rolling cache needs 'rope'")
    print(f"loaded {out_dir}")
    return config.model, params, np.asarray(load_dataset(config.data_path, config.model.block_size).val)


def both_modes(config: GPTConfig, params, passages: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next-token log-probabilities of passages (B, L) after each of their first L - 1 tokens, recompute's and
    rolling's: two (B, L - 1, V) float32 arrays."""
    model, W = GPT(config), config.block_size

    @jax.jit
    def rolling(params, passages):  # -> (B, L - 1, V)
        def step(cache, token):  # token (B,)
            logits, cache = model.apply({"params": params, **cache}, token[:, None], decode="rolling",
                                        mutable=["cache"])
            return cache, logits[:, 0]  # (B, V)

        cache, first = step({}, passages[:, 0])  # starts the cache
        _, logits = jax.lax.scan(step, cache, passages[:, 1:-1].T)  # (L - 2, B, V)
        return jax.nn.log_softmax(jnp.concatenate([first[:, None], logits.swapaxes(0, 1)], axis=1))

    @jax.jit
    def recompute(params, passage):  # (L,) -> (L - 1, V): each position from the last <= W tokens before it
        L = passage.shape[0]
        starts = jnp.clip(jnp.arange(1, L) - W, 0, L - W)  # the context of position t: [start, t)
        windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(passage, s, W))(starts)  # (L - 1, W)
        logits = model.apply({"params": params}, windows)  # (L - 1, W, V)
        return jax.nn.log_softmax(logits[jnp.arange(L - 1), jnp.arange(L - 1) - starts])

    return jax.lax.map(functools.partial(recompute, params), passages), rolling(params, passages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small", help="named config to train with RoPE (default: small)")
    parser.add_argument("--max_iters", type=int, default=3000, help="training steps (default: 3000)")
    parser.add_argument("--out_dir", help="a trained RoPE run to load instead of training")
    parser.add_argument("--streams", type=int, default=64, help="validation passages (default: 64)")
    parser.add_argument("--windows", type=int, default=8, help="block_sizes of each passage past the first")
    args = parser.parse_args()

    config, params, val = (loaded_rope_model(args.out_dir) if args.out_dir else
                           trained_rope_model(args.config, args.max_iters))
    W = config.block_size
    L = W * (args.windows + 1) + 1  # tokens per passage: the last is only a target
    starts = np.linspace(0, len(val) - L, args.streams).astype(int)
    passages = jnp.asarray(np.stack([val[s:s + L] for s in starts]))  # (B, L)
    tic = time.perf_counter()
    log_p, log_q = both_modes(config, params, passages)  # (B, L - 1, V) each
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    kl = np.asarray(jnp.sum(p * (log_p - log_q), axis=-1))  # (B, L - 1)
    tv = np.asarray(0.5 * jnp.sum(jnp.abs(p - q), axis=-1))
    agree = np.asarray(jnp.argmax(log_p, -1) == jnp.argmax(log_q, -1))
    targets = passages[:, 1:, None]
    loss_p = np.asarray(-jnp.take_along_axis(log_p, targets, -1)[..., 0])
    loss_q = np.asarray(-jnp.take_along_axis(log_q, targets, -1)[..., 0])
    print(f"block_size {W}, {config.n_layer} layers; {args.streams} val passages of {L} characters "
          f"({time.perf_counter() - tic:.0f} s)")

    dropped = np.arange(1, L) - W  # characters dropped from the window before predicting position t
    edges = [-W, 0, *[W * f for f in (0.25, 0.5, 1, 2, 4, 8, 16, 32) if W * f <= args.windows * W]]
    edges = sorted(set(edges) | {args.windows * W})
    header = (f"{'dropped':>11} {'n':>6} {'KL mean':>9} {'KL max':>9} {'TV mean':>8} {'TV max':>7} "
              f"{'top-1 agree':>11} {'loss recompute':>14} {'loss rolling':>12}")
    print(header + "\n" + "-" * len(header))
    for lo, hi in zip(edges, edges[1:], strict=False):
        cols = (dropped > lo) & (dropped <= hi)
        name = "0 (fits)" if hi == 0 else f"{int(lo) + 1}-{int(hi)}"
        print(f"{name:>11} {cols.sum() * args.streams:6d} {kl[:, cols].mean():9.2e} {kl[:, cols].max():9.2e} "
              f"{tv[:, cols].mean():8.4f} {tv[:, cols].max():7.4f} {agree[:, cols].mean():10.1%} "
              f"{loss_p[:, cols].mean():14.4f} {loss_q[:, cols].mean():12.4f}")


if __name__ == "__main__":
    main()
