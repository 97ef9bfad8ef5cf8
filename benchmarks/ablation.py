"""What each option of the speedrun recipe is worth: val loss at a fixed number of steps, and time per step.

    JAXGPT_DATA=path/to/input.txt python benchmarks/ablation.py [--config=speedrun] [--options=muon,rope] [--f=v ...]

Runs the config as it is, then once with each modern option it uses turned off (one at a time: the lecture's
choice, or for the untied head GPT-2's tied one), then with all of them off, keeping only the config's size and
schedule. Every run is a whole
`python -m jaxgpt.train` process with the same seed, steps and schedule; the val loss is over the whole val split
(`eval_mode=full`, deterministic), the time per step is the training throughput jaxgpt measured (without
compiling and evaluation).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile

from jaxgpt.cli import parse_train_args
from jaxgpt.core.config import load_config
from jaxgpt.store.rundir import RunDir

# option -> the flags that turn it off
OPTION_OFF = {
    "muon": ["--optimizer=adamw"],
    "rope": ["--position=learned"],
    "rmsnorm": ["--norm=layernorm"],
    "qk_norm": ["--qk_norm=false"],
    "relu2": ["--activation=relu"],
    "no biases": ["--bias=true", "--lm_head_bias=true"],
    "untied head": ["--tie_embeddings=true"],
    "zero_init_proj": ["--zero_init_proj=false"],
    "logit_softcap": ["--logit_softcap=0"],
}


def run(config: str, data_path: str, flags: list[str]) -> tuple[float, float]:
    """(val loss, training tokens/s) of one whole training process."""
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, "-m", "jaxgpt.train", f"--config={config}", f"--data_path={data_path}",
               f"--out_dir={out_dir}", "--progress=false", "--sample_chars=0", "--eval_mode=full", *flags]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        last = RunDir(out_dir).read_metrics()[-1]
    return last["val_loss"], last["tokens_per_sec"]


def uses(config: str, off: list[str]) -> bool:
    """Whether the config has the option on: turning it off changes the config."""
    return parse_train_args([f"--config={config}", *off]) != parse_train_args([f"--config={config}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("JAXGPT_DATA"), help="tiny Shakespeare input.txt")
    parser.add_argument("--config", default="speedrun", help="the recipe to ablate (default: %(default)s)")
    parser.add_argument("--options", default=",".join(OPTION_OFF), help="the options to take out one at a time, "
                        "of those the config uses (default: all of %(default)s)")
    args, flags = parser.parse_known_args()
    base = load_config(args.config)
    tokens_per_step = base.batch_size * base.block_size
    for flag in flags:  # a --batch_size or --block_size given here changes the tokens per step
        name, _, value = flag[2:].partition("=")
        if name in ("batch_size", "block_size"):
            tokens_per_step = tokens_per_step // getattr(base, name) * int(value)

    variants = {f"{args.config} as it is": []}
    used = [option for option in args.options.split(",") if uses(args.config, OPTION_OFF[option])]
    variants.update({f"without {option}": OPTION_OFF[option] for option in used})
    variants["every option off"] = [flag for choice in OPTION_OFF.values() for flag in choice]
    print(f"date: {datetime.datetime.now():%Y-%m-%d %H:%M}  machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores  load: {os.getloadavg()[0]:.2f}")
    print(f"command: {' '.join(sys.argv)}\n")
    print(f"{'variant':<28} {'val loss':>9} {'ms/step':>8}")
    for name, choice in variants.items():
        val, tokens_per_sec = run(args.config, args.data_path, [*flags, *choice])
        print(f"{name:<28} {val:>9.4f} {1000 * tokens_per_step / tokens_per_sec:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
