"""`python -m jaxgpt.train --config=small [--field=value ...]`: train a GPT on a text file (see jaxgpt.run.training)."""

from __future__ import annotations

import shlex
import sys

from jaxgpt.cli import parse_train_args, run_cli, worth_keeping
from jaxgpt.run.training import train
from jaxgpt.store.rundir import RunDir
from jaxgpt.system import allocator, compile_cache, sharding
from jaxgpt.system.interrupt import stop_on_signals

DESCRIPTION = ("Train a GPT on a text file or a prepared dataset, from a fresh init or from pretrained weights "
               "(--init_from). Every field of the config is a flag: --config=NAME, then --field=value.")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    options = {"prog": "python -m jaxgpt.train", "description": DESCRIPTION}
    config = parse_train_args(argv, **options)
    compile_cache.enable_default()
    if not worth_keeping(config):
        allocator.use_default_malloc()  # kept, blocks this large fragment the heap (jaxgpt/system/allocator.py)
    run_config = RunDir(config.out_dir).config_file
    if config.resume and run_config.is_file() and not any(arg.startswith("--config") for arg in argv):
        config = parse_train_args([f"--config={run_config}", *argv], **options)  # the run's own config + new flags
    with stop_on_signals() as stop:
        result = train(config, stop=stop)
    if result.interrupted:
        if sharding.is_main_process():
            print(f"interrupted at step {int(result.state.step)}, checkpoint saved; resume with: python -m "
                  f"jaxgpt.train --out_dir={shlex.quote(config.out_dir)} --resume", file=sys.stderr)
        sys.exit(stop.exit_code)


def entry_point() -> None:
    """The `jaxgpt-train` console script."""
    run_cli(main)


if __name__ == "__main__":
    entry_point()
