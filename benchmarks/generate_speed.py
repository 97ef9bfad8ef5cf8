"""Generation speed: jaxgpt's KV-cached `generate` vs the lecture's PyTorch `generate`, same weights, one run.

    python benchmarks/generate_speed.py [--repeats=3] [--torch_threads=2] [--no_torch]
    python benchmarks/generate_speed.py --rolling [--repeats=5]

The `lecture` config (10.79M parameters) with random weights, 1-token prompts. Cases: 1 and 8 samples x 255 new
tokens (the whole context stays within block_size = 256), and 1 sample x 2000 new tokens (the last 1745 beyond
it). The "beyond block_size" row is derived: (2000 - 255) / (t_2000 - t_255). jaxgpt's tok/s is the best of
`--repeats` runs after compiling; its compile time (first call minus best run) is reported separately. PyTorch
runs each case once. Batch scaling adds jaxgpt with 2 and 4 samples. "weights-only floor" times a jitted scan
doing only each token's products with the weight matrices (no attention, no sampling): the limit that streaming
42.5 MB of weights per step sets on this machine. With JAXGPT_SMOKE=1 a tiny model and short cases only check
that the script runs (the tests do this).

`--rolling` times only the two modes beyond block_size on the `lecture` model with RoPE (random weights): from a
block_size-token prompt, 2000 new tokens (all beyond it) with `cache="recompute"` and with `cache="rolling"`,
compiled first, then `--repeats` timed runs of each, in turns; median tok/s and the range.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from jaxgpt.core.config import GPTConfig
from jaxgpt.core.model import init_params
from jaxgpt.core.sampling import generate
from jaxgpt.torch_reference.lecture import GPTLanguageModel, load_jaxgpt_params

SMOKE = os.environ.get("JAXGPT_SMOKE") == "1"  # a tiny model and short cases: checks that the script runs (CI)
SCALING_BATCHES = [1, 8] if SMOKE else [1, 2, 4, 8]  # samples, with block_size - 1 new tokens
LONG = 2000  # new tokens of the case that runs beyond block_size


def time_jaxgpt(config: GPTConfig, params, batch: int, new_tokens: int, repeats: int) -> tuple[float, float]:
    """(best seconds per run, compile seconds) for `generate` from a 1-token prompt."""
    prompt = jnp.zeros((batch, 1), jnp.int32)
    tic = time.perf_counter()
    generate(config, params, prompt, new_tokens, jax.random.key(0)).block_until_ready()
    first = time.perf_counter() - tic
    runs = []
    for r in range(repeats):
        tic = time.perf_counter()
        generate(config, params, prompt, new_tokens, jax.random.key(r + 1)).block_until_ready()
        runs.append(time.perf_counter() - tic)
    return min(runs), max(first - min(runs), 0.0)


def rolling_vs_recompute(config: GPTConfig, repeats: int, new_tokens: int) -> None:
    """Print tok/s beyond block_size of generate's two modes, on `config` with RoPE, as median (min-max)."""
    config = dataclasses.replace(config, position="rope")
    params = init_params(config, jax.random.key(0))
    prompt = jax.random.randint(jax.random.key(1), (1, config.block_size), 0, config.vocab_size)  # a full window

    def run(cache: str, seed: int) -> float:  # seconds
        tic = time.perf_counter()
        generate(config, params, prompt, new_tokens, jax.random.key(seed), cache=cache).block_until_ready()
        return time.perf_counter() - tic

    modes = ("recompute", "rolling")
    compile_s = {mode: run(mode, 0) for mode in modes}  # the first call compiles
    runs = {mode: [] for mode in modes}
    for r in range(repeats):  # in turns, so that both modes see the same machine load
        for mode in modes:
            runs[mode].append(run(mode, r + 1))
    rates = {mode: sorted(new_tokens / s for s in runs[mode]) for mode in modes}
    print(f"RoPE model, 1 sample, {config.block_size}-token prompt, {new_tokens} new tokens (all beyond block_size), "
          f"{repeats} timed runs per mode in turns:")
    for mode in modes:
        print(f"  {mode:<10} {statistics.median(rates[mode]):8.1f} tok/s median  ({rates[mode][0]:.1f}-"
              f"{rates[mode][-1]:.1f})  first call {compile_s[mode]:.1f} s (compiling included)")
    (slow, fast) = (rates[mode] for mode in modes)
    print(f"  rolling / recompute: {statistics.median(fast) / statistics.median(slow):.1f}x of the medians "
          f"(range {fast[0] / slow[-1]:.1f}-{fast[-1] / slow[0]:.1f}x)")


def time_torch(model, batch: int, new_tokens: int) -> float:
    import torch

    torch.manual_seed(1337)
    idx = torch.zeros((batch, 1), dtype=torch.long)
    tic = time.perf_counter()
    model.generate(idx, new_tokens)
    return time.perf_counter() - tic


def weights_only_floor(params, n_layer: int, batch: int, steps: int) -> float:
    """Tokens/s of a jitted scan doing only each token's products with the weight matrices."""
    blocks = [params[f"blocks_{i}"] for i in range(n_layer)]

    def step(x, _):  # x: (batch, C)
        for block in blocks:
            sa, ffwd = block["sa"], block["ffwd"]
            qkv = x @ sa["query"]["kernel"] + x @ sa["key"]["kernel"] + x @ sa["value"]["kernel"]
            x = x + jnp.tanh(qkv) @ sa["proj"]["kernel"]
            x = x + jax.nn.relu(x @ ffwd["fc"]["kernel"]) @ ffwd["proj"]["kernel"]
        return x + 1e-3 * jnp.mean(x @ params["lm_head"]["kernel"]), None

    run = jax.jit(lambda x: jax.lax.scan(step, x, None, length=steps)[0])
    x = jnp.full((batch, blocks[0]["sa"]["query"]["kernel"].shape[0]), 0.01)
    run(x).block_until_ready()
    best = float("inf")
    for _ in range(5):
        tic = time.perf_counter()
        run(x).block_until_ready()
        best = min(best, time.perf_counter() - tic)
    return batch * steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed jaxgpt runs per case (best is reported)")
    parser.add_argument("--torch_threads", type=int, default=2)
    parser.add_argument("--no_torch", action="store_true", help="time jaxgpt only")
    parser.add_argument("--rolling", action="store_true",
                        help="time only generate's recompute and rolling modes beyond block_size (RoPE)")
    args = parser.parse_args()

    config = GPTConfig(dropout=0.0)  # the lecture's architecture; vocab 65, block_size 256
    if SMOKE:
        config = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    within, long = config.block_size - 1, LONG if not SMOKE else 40  # new tokens from a 1-token prompt
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} ({jax.default_backend()}), load average {os.getloadavg()[0]:.2f}")
    if args.rolling:
        rolling_vs_recompute(config, args.repeats, long)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        return
    params = init_params(config, jax.random.key(0))

    torch_model = None
    if not args.no_torch:
        import torch

        torch.set_num_threads(args.torch_threads)
        torch_model = GPTLanguageModel(config.vocab_size, config.block_size, config.n_layer, config.n_head,
                                       config.n_embd, 0.0).eval()
        load_jaxgpt_params(torch_model, params)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows = {}
    for batch, new_tokens in [(1, within), (8, within), (1, long)]:
        seconds, compile_s = time_jaxgpt(config, params, batch, new_tokens, args.repeats)
        torch_s = time_torch(torch_model, batch, new_tokens) if torch_model is not None else float("nan")
        rows[batch, new_tokens] = (seconds, compile_s, torch_s)

    header = f"{'case':<34} {'jaxgpt tok/s':>12} {'compile s':>9} {'PyTorch tok/s':>13} {'ratio':>7}"
    print(header + "\n" + "-" * len(header))

    def row(name: str, tokens: int, seconds: float, torch_s: float, compile_s: float | None = None) -> None:
        ours, theirs = tokens / seconds, tokens / torch_s
        compiled = f"{compile_s:9.1f}" if compile_s is not None else " " * 9
        print(f"{name:<34} {ours:12.1f} {compiled} {theirs:13.1f} {ours / theirs:6.1f}x")

    for (batch, new_tokens), (seconds, compile_s, torch_s) in rows.items():
        row(f"{batch} sample(s) x {new_tokens} new", batch * new_tokens, seconds, torch_s, compile_s)
    (short_s, _, torch_short_s), (long_s, _, torch_long_s) = rows[1, within], rows[1, long]
    row("1 sample beyond block_size (derived)", long - within, long_s - short_s, torch_long_s - torch_short_s)
    rates = {b: b * within / rows[b, within][0] if (b, within) in rows else
             b * within / time_jaxgpt(config, params, b, within, args.repeats)[0] for b in SCALING_BATCHES}
    print(f"\njaxgpt, {within} new tokens, tok/s by samples: " + ", ".join(f"{b}: {r:.0f}" for b, r in rates.items())
          + f"  (8 vs 1: {rates[8] / rates[1]:.1f}x)")
    floors = {b: weights_only_floor(params, config.n_layer, b, within) for b in (1, 8)}
    print(f"weights-only floor, tok/s: 1 sample {floors[1]:.0f}, 8 samples {floors[8]:.0f}"
          f"  (8 vs 1: {floors[8] / floors[1]:.1f}x)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
