"""Fine-tuning a GPT-2-shaped model on a CPU (issue 14): seconds per step and peak memory of
`configs/finetune_shakespeare.py`, and scoring with float32 and with bfloat16 weights.

    python benchmarks/finetune_cpu.py [--steps=5] [--batch_size=4] [--block_size=256] [--eval_tokens=8192]

GPT-2's real weights cannot be downloaded here. The weights are a randomly initialised `GPT2LMHeadModel(GPT2Config())`
(GPT-2's 124M shapes by default) saved with `save_pretrained`, and GPT-2's encoding is a stand-in of the same size
(50,257 tokens: the 256 bytes, 50,000 two-byte merges and the end-of-text token). Time and memory depend on the
shapes, not the values: the losses printed mean nothing. Each phase runs in a process of its own, so that its
peak memory (ru_maxrss) is its own: building the weights (torch) and the dataset; fine-tuning (`init_from` the
directory: loading, compiling, steps); scoring a prefix of the val split with float32 and with bfloat16 weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxgpt.system.allocator import keep_freed_memory

keep_freed_memory()  # as the command lines do, before JAX starts its threads

import tiktoken  # noqa: E402

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def standin_encoding(vocab_size: int) -> tiktoken.Encoding:
    """An encoding of GPT-2's size: the 256 bytes, two-byte merges and the end-of-text token (the last id)."""
    ranks = {bytes([i]): i for i in range(256)}
    for first in range(256):
        for second in range(256):
            if len(ranks) < vocab_size - 1:
                ranks[bytes([first, second])] = len(ranks)
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": vocab_size - 1})


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make(args: argparse.Namespace) -> dict:
    """The random GPT-2 (save_pretrained) and tiny Shakespeare tokenized with the stand-in encoding."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from jaxgpt.data.text import resolve_data_path
    from jaxgpt.data.writer import prepare

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=args.vocab_size, n_positions=args.n_positions, n_embd=args.n_embd,
                        n_layer=args.n_layer, n_head=args.n_head)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(Path(args.dir) / "weights")
    prepare([str(resolve_data_path(None))], Path(args.dir) / "data", tokenizer="gpt2", progress=False,
            log=lambda _: None)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def finetune(args: argparse.Namespace) -> dict:
    """Load, compile and time `args.steps` steps of finetune_shakespeare's recipe from the weights."""
    import jax

    from jaxgpt.core.config import load_config
    from jaxgpt.run.training import Run

    recipe = load_config("finetune_shakespeare")
    config = dataclasses.replace(
        recipe, init_from=str(Path(args.dir) / "weights"), data_path=str(Path(args.dir) / "data"),
        out_dir=str(Path(args.dir) / "run"), overwrite=True, batch_size=args.batch_size, steps_per_call=1,
        max_iters=args.steps, progress=False, model=dataclasses.replace(recipe.model, block_size=args.block_size))
    started = time.perf_counter()
    with Run(config, log=lambda _: None) as run:
        loaded = time.perf_counter()
        run.compile()
        compiled = time.perf_counter()
        seconds, losses = [], []
        for _ in range(args.steps):
            step_start = time.perf_counter()
            losses.append(float(jax.block_until_ready(run.step())))
            seconds.append(time.perf_counter() - step_start)
        tokens = run.tokens_per_step
    return {"load_s": loaded - started, "compile_s": compiled - loaded, "step_s": statistics.median(seconds),
            "steps_s": seconds, "tokens_per_step": tokens, "losses": losses, "peak_mb": peak_mb()}


def score(args: argparse.Namespace) -> dict:
    """Load the weights in `args.dtype` and score the first `args.eval_tokens` val tokens."""
    import jax

    from jaxgpt.data.prepared import open_prepared
    from jaxgpt.run import evaluate as scoring
    from jaxgpt.weights import pretrained

    started = time.perf_counter()
    config, params, tokenizer = pretrained.load(str(Path(args.dir) / "weights"), args.dtype)
    config = pretrained.for_inference(config, args.dtype)
    param_mb = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(params)) / 2**20
    loaded = time.perf_counter()
    tokens = open_prepared(Path(args.dir) / "data").val[: args.eval_tokens]
    result = scoring.score(config, params, tokens, tokenizer.token_bytes(), args.batch_size, args.block_size)
    scored = time.perf_counter()
    return {"load_s": loaded - started, "score_s": scored - loaded, "tokens": result.tokens, "loss": result.loss,
            "param_mb": param_mb, "peak_mb": peak_mb()}


def child(args: argparse.Namespace, phase: str, **changes) -> dict:
    """Run `phase` in a new process; its result (the last line it prints, JSON)."""
    argv = [f"--{key}={value}" for key, value in {**vars(args), "phase": phase, **changes}.items()]
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{phase} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n_layer", type=int, default=12)
    parser.add_argument("--n_head", type=int, default=12)
    parser.add_argument("--n_embd", type=int, default=768)
    parser.add_argument("--n_positions", type=int, default=1024)
    parser.add_argument("--vocab_size", type=int, default=50257)
    parser.add_argument("--batch_size", type=int, default=4, help="sequences per step (finetune_shakespeare's 4)")
    parser.add_argument("--block_size", type=int, default=256, help="finetune_shakespeare's 256")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after compiling")
    parser.add_argument("--eval_tokens", type=int, default=8192, help="val tokens scored per dtype")
    parser.add_argument("--phase", choices=["all", "make", "finetune", "score"], default="all")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dir", default="")
    args = parser.parse_args()
    tiktoken.get_encoding = lambda name: standin_encoding(args.vocab_size)  # GPT-2's encoding, offline
    if args.phase != "all":
        print(json.dumps({"make": make, "finetune": finetune, "score": score}[args.phase](args)))
        return
    with tempfile.TemporaryDirectory() as directory:
        args.dir = directory
        made = child(args, "make")
        tuned = child(args, "finetune")
        scores = {dtype: child(args, "score", dtype=dtype) for dtype in ("float32", "bfloat16")}
    print(f"random GPT2LMHeadModel(GPT2Config(n_layer={args.n_layer}, n_head={args.n_head}, n_embd={args.n_embd}, "
          f"vocab_size={args.vocab_size})): {made['parameters'] / 1e6:.1f}M parameters")
    print(f"fine-tuning, batch {args.batch_size} x block {args.block_size} ({tuned['tokens_per_step']} tokens per "
          f"step): load {tuned['load_s']:.1f} s, compile {tuned['compile_s']:.1f} s, "
          f"{tuned['step_s']:.2f} s per step (median of {args.steps}: "
          f"{', '.join(f'{s:.2f}' for s in tuned['steps_s'])}), "
          f"{tuned['tokens_per_step'] / tuned['step_s']:.0f} tokens/s, peak RSS {tuned['peak_mb']:.0f} MB, "
          f"losses {', '.join(f'{v:.3f}' for v in tuned['losses'])}")
    for dtype, result in scores.items():
        print(f"scoring {result['tokens']} val tokens with {dtype} weights ({result['param_mb']:.0f} MB of params): "
              f"load {result['load_s']:.1f} s, score {result['score_s']:.1f} s, peak RSS {result['peak_mb']:.0f} MB, "
              f"loss {result['loss']:.4f}")


if __name__ == "__main__":
    main()
