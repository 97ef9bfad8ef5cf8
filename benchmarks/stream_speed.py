"""What streaming costs: chunked decoding (jaxgpt.core.streaming, kept) against a host callback per token (not kept).

    python benchmarks/stream_speed.py [--config=small] [--tokens=200] [--repeats=5]

One process, the model of `configs/NAME.py` with a random init, one prompt token, `--tokens` new tokens (within
block_size, so every token is decoded into the KV cache). Compiled first; then each way is timed `--repeats`
times in turns and the medians printed, with the time to the first chunk where it applies:

- `generate`: the whole sampler in one compiled call (no streaming): the yardstick;
- `stream, chunk=N`: jaxgpt's streaming, N tokens per compiled call, the host reading each chunk;
- `callback`: one compiled loop like the cached phase of `generate` (one cache size) that hands every token to
  the host through `jax.experimental.io_callback(ordered=True)`, against the same loop without the callback.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
from jax.experimental import io_callback

from jaxgpt.core.config import load_config
from jaxgpt.core.model import build_model, init_params
from jaxgpt.core.sampling import Sampling, decode_step, generate, prefill
from jaxgpt.core.streaming import stream


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "callback"))
def one_loop(config, params, prompt, key, sampling, *, max_new_tokens: int, callback: bool):
    """Prefill, then decode every new token in one scan over a block_size cache; with `callback`, each new token
    goes to the host as it is drawn."""
    model, T0 = build_model(config), prompt.shape[1]
    tokens, kv = prefill(model, params, prompt, key, sampling, config.block_size, max_new_tokens)

    def step(carry, i):
        tokens, kv = decode_step(model, params, key, sampling, T0, carry, i)
        if callback:
            io_callback(lambda token: None, None, tokens[:, T0 + i], ordered=True)
        return (tokens, kv), None

    (tokens, _), _ = jax.lax.scan(step, (tokens, kv), jnp.arange(1, max_new_tokens))
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="small")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = load_config(args.config).model
    config = type(config)(**{**config.__dict__, "dropout": 0.0})
    params = init_params(config, jax.random.key(0))
    prompt, key, n = jnp.zeros((1, 1), jnp.int32), jax.random.key(1), args.tokens
    sampling = Sampling.of(config.vocab_size, 1.0, None, None)

    def run_generate():
        return generate(config, params, prompt, n, key).block_until_ready(), None

    def run_stream(chunk):
        start, first = time.perf_counter(), None
        for _ in stream(config, params, prompt, n, key, chunk=chunk):
            first = first or time.perf_counter() - start
        return None, first

    def run_loop(callback):
        return one_loop(config, params, prompt, key, sampling, max_new_tokens=n, callback=callback).block_until_ready(
        ), None

    ways = {"generate": run_generate, **{f"stream, chunk={c}": functools.partial(run_stream, c) for c in (1, 8, 32)},
            "one loop": functools.partial(run_loop, False), "one loop + callback": functools.partial(run_loop, True)}
    for way in ways.values():  # compile
        way()
    times: dict[str, list[float]] = {name: [] for name in ways}
    firsts: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            _, first = way()
            times[name].append(time.perf_counter() - start)
            if first is not None:
                firsts[name].append(first)
    print(f"{args.config}: {n} new tokens, {args.repeats} repeats in turns, medians [min-max]")
    for name in ways:
        ms = [t * 1e3 for t in times[name]]
        line = f"{name:22s} {statistics.median(ms):8.1f} ms [{min(ms):.1f}-{max(ms):.1f}]  " \
               f"{n / statistics.median(times[name]):8.0f} tokens/s"
        if firsts[name]:
            line += f"  first chunk {statistics.median(firsts[name]) * 1e3:.1f} ms"
        print(line)


if __name__ == "__main__":
    main()
