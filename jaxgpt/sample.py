"""`python -m jaxgpt.sample --out_dir=RUN | --init_from=SOURCE [--prompt=TEXT ...]`: sample text from a trained run
or from pretrained weights (see jaxgpt.sample)."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.cli import COMPILE_FOR_HELP, ArgumentParser, compile_only, means_none, run_cli
from jaxgpt.core.config import INT32_MAX, GPTConfig, seed_range
from jaxgpt.core.sampling import Cache, generate
from jaxgpt.core.streaming import stream
from jaxgpt.data.tokenizers import Tokenizer, default_prompt
from jaxgpt.run.compile_check import check_sample
from jaxgpt.store import checkpoint
from jaxgpt.store.rundir import RunDir
from jaxgpt.system import compile_cache
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.system.targets import find_target
from jaxgpt.weights import pretrained

RULE = "-" * 40  # printed between samples


def _optional(convert):
    def optional(raw: str):
        return None if means_none(raw) else convert(raw)

    optional.__name__ = convert.__name__  # argparse names it in errors: "invalid int value: '2.5'"
    return optional


def parse_sample_args(argv: list[str]) -> dict:
    parser = ArgumentParser(prog="python -m jaxgpt.sample", description="Sample text from a trained run or from "
                            "pretrained weights.", formatter_class=argparse.HelpFormatter)  # defaults: in the help
    parser.add_argument("--out_dir", metavar="RUN", help="directory of a training run (its latest checkpoint)")
    parser.add_argument("--init_from", metavar="SOURCE", help=f"or pretrained weights: "
                        f"{', '.join(pretrained.HUB_MODELS)} (Hugging Face hub), a run directory, a save_pretrained "
                        "directory or a .pt file")
    parser.add_argument("--dtype", choices=list(pretrained.DTYPES), default="float32",
                        help="the weights in memory: bfloat16 halves it (default: %(default)s)")
    parser.add_argument("--prompt", metavar="TEXT", help="text to continue (default: for a character tokenizer "
                        "token 0, as the lecture and training's own sample start, a newline in Shakespeare; for a BPE "
                        "or GPT-2 tokenizer the end-of-text token, as at the start of a document)")
    parser.add_argument("--num_samples", type=int, default=3, metavar="N",
                        help="independent samples (default: %(default)s)")
    parser.add_argument("--max_new_tokens", type=int, default=500, metavar="N",
                        help="tokens per sample (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="0 is greedy; 1 (default) samples the model's distribution, like the lecture")
    parser.add_argument("--top_k", type=_optional(int), default=None, metavar="K",
                        help="keep the k most likely tokens (default: all)")
    parser.add_argument("--top_p", type=_optional(float), default=None, metavar="P",
                        help="keep the smallest set of tokens whose probability reaches p (default: all)")
    parser.add_argument("--seed", type=int, default=1337, metavar="SEED",
                        help="the samples' PRNG seed (default: %(default)s)")
    parser.add_argument("--cache", choices=get_args(Cache), default="recompute",
                        help="beyond block_size: recompute (default) reruns the model on the last block_size tokens "
                        "for every token, the lecture's semantics; rolling (RoPE models) keeps a sliding window of "
                        "cached keys and values, much faster but other logits from the second layer on "
                        "(docs/sampling.md)")
    parser.add_argument("--stream", action="store_true", help="print the tokens as they are drawn (the first "
                        "sample; the others, drawn beside it, follow at its end); the same text as without")
    parser.add_argument("--interactive", action="store_true", help="read prompts from the terminal (one per line) "
                        "until end of input (Ctrl-D), continuing each and streaming it; Ctrl-C stops a stream")
    parser.add_argument("--compile_for", metavar="TARGET", help=COMPILE_FOR_HELP)
    args = vars(parser.parse_args(argv))
    if args["interactive"] and (args["prompt"] is not None or args["compile_for"]):
        raise UsageError(f"--interactive reads its prompts from the terminal; leave out "
                         f"{'--prompt' if args['prompt'] is not None else '--compile_for'}")
    if (args["out_dir"] is None) == (args["init_from"] is None):
        given = "not both" if args["out_dir"] is not None else "one is required"
        raise UsageError(f"give --out_dir=RUN (a training run) or --init_from=SOURCE (pretrained weights); {given}")
    if args["num_samples"] < 1:
        raise UsageError(f"--num_samples must be >= 1, got {args['num_samples']}")
    if args["num_samples"] * max(args["max_new_tokens"], 1) > INT32_MAX:
        raise UsageError(f"--num_samples * --max_new_tokens must be at most {INT32_MAX:,} tokens (2**31 - 1), got "
                         f"{args['num_samples']:,} * {args['max_new_tokens']:,}")
    if args["prompt"] == "":
        raise UsageError("--prompt must not be empty; leave it out to start from the default (see --help)")
    problem = seed_range(args["seed"])
    if problem:
        raise UsageError(f"--seed {problem}, got {args['seed']}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_sample_args(sys.argv[1:] if argv is None else argv)
    if args["compile_for"]:
        return compile_sample(args)
    compile_cache.enable_default()
    model, params, tokenizer = _load(args)
    model = pretrained.for_inference(model, args["dtype"])
    sampler = functools.partial(
        stream if args["stream"] or args["interactive"] else generate, model, params,
        max_new_tokens=args["max_new_tokens"], key=jax.random.key(args["seed"]), temperature=args["temperature"],
        top_k=args["top_k"], top_p=args["top_p"], cache=args["cache"])
    if args["interactive"]:
        return _interactive(sampler, tokenizer, args["num_samples"])
    prompt = [_prompt_ids(tokenizer, args["prompt"])] * args["num_samples"]  # (num_samples, T0)
    if args["stream"]:
        _print_stream(sampler(prompt), prompt, tokenizer)
        return
    samples = [tokenizer.decode(row) for row in np.asarray(sampler(jnp.asarray(prompt, jnp.int32)))]
    print(f"\n{RULE}\n".join(samples))


def _print_stream(chunks: Iterator[np.ndarray], prompt: list[list[int]], tokenizer: Tokenizer,
                  show_prompt: bool = True) -> None:
    """Print the first row's text as its tokens arrive, then the other rows, as the non-streaming output would
    be printed (a trailing unfinished UTF-8 character waits for the tokens that finish it)."""
    rows = [list(row) for row in prompt]
    shown = len(tokenizer.decode(rows[0])) if not show_prompt else 0
    for new in chunks:  # (B, n)
        for row, tokens in zip(rows, new.tolist(), strict=True):
            row.extend(tokens)
        text = tokenizer.decode(rows[0]).rstrip("\ufffd")
        print(text[shown:], end="", flush=True)
        shown = max(shown, len(text))
    print(tokenizer.decode(rows[0])[shown:], end="")
    print("".join(f"\n{RULE}\n{tokenizer.decode(row)}" for row in rows[1:]), flush=True)


def _interactive(sampler: Callable, tokenizer: Tokenizer, num_samples: int) -> None:
    """Continue each line of input until its end, streaming; a Ctrl-C stops the stream, not the session."""
    ask = "> " if sys.stdin.isatty() else ""
    while True:
        try:
            line = input(ask)
        except EOFError:
            return
        if not line:
            continue
        try:
            prompt = [tokenizer.encode(line)] * num_samples
        except UsageError as err:
            print(f"error: the prompt has {err}; give another", file=sys.stderr, flush=True)
            continue
        try:
            _print_stream(sampler(prompt, padded=True), prompt, tokenizer, show_prompt=False)
        except KeyboardInterrupt:
            print(flush=True)
        print(RULE, flush=True)


def compile_sample(args: dict) -> None:
    """--compile_for: the sampler compiled for one device of the target, here; exit 1 if it does not fit."""
    target = find_target(args["compile_for"])
    compile_only()
    if args["out_dir"] is not None:
        _check_out_dir(args["out_dir"])
        run = RunDir(args["out_dir"])
        model, tokenizer = run.read_config().model, run.read_tokenizer
    else:
        model = pretrained.model_config(args["init_from"])
        tokenizer = lambda: pretrained.load(args["init_from"])[2]  # noqa: E731 (the weights' tokenizer)
    prompt_len = len(_prompt_ids(tokenizer(), args["prompt"])) if args["prompt"] else 1  # the default: one token
    report = check_sample(model, target, dtype=args["dtype"], prompt_len=prompt_len,
                          num_samples=args["num_samples"], max_new_tokens=args["max_new_tokens"], cache=args["cache"])
    print(report.format())
    if problem := report.fit_problem():
        raise JaxgptError(problem)


def _load(args: dict) -> tuple[GPTConfig, dict, Tokenizer]:
    """(model config, params in --dtype, tokenizer) of --out_dir (a run's latest checkpoint) or --init_from."""
    if args["out_dir"] is not None:
        _check_out_dir(args["out_dir"])
        config, params, tokenizer = checkpoint.load(args["out_dir"])
        return config.model, pretrained.cast_params(params, args["dtype"]), tokenizer
    model, params, tokenizer = pretrained.load(args["init_from"], args["dtype"])
    if tokenizer is None:
        raise UsageError(f"{args['init_from']} does not say which tokenizer it was trained with; convert it with "
                         "its tokenizer (python -m jaxgpt.convert MODEL.pt OUT_DIR --tokenizer=FILE) and sample "
                         "--out_dir=OUT_DIR")
    return model, params, tokenizer


def _check_out_dir(out_dir: str) -> None:
    if not Path(out_dir).is_dir():
        what = "is a file" if Path(out_dir).exists() else "does not exist"
        raise UsageError(f"--out_dir {out_dir!r} {what}; pass the out_dir of a training run")


def _prompt_ids(tokenizer: Tokenizer, prompt: str | None) -> list[int]:
    """--prompt's tokens, or the default prompt's (one token)."""
    try:
        return default_prompt(tokenizer) if prompt is None else tokenizer.encode(prompt)
    except UsageError as err:
        raise UsageError(f"--prompt has {err}") from None


def entry_point() -> None:
    """The `jaxgpt-sample` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
