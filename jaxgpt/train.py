"""`python -m jaxgpt.train --config=small [--field=value ...]`: train a GPT on a text file (see jaxgpt.run.training)."""

from __future__ import annotations

import shlex
import sys

import jax

from jaxgpt.cli import compile_only, parse_train_args, parse_train_command, run_cli, worth_keeping
from jaxgpt.core.config import TrainConfig
from jaxgpt.run.compile_check import check_train
from jaxgpt.run.training import train
from jaxgpt.store.rundir import RunDir
from jaxgpt.system import allocator, compile_cache, sharding
from jaxgpt.system.errors import JaxgptError
from jaxgpt.system.interrupt import stop_on_signals
from jaxgpt.system.targets import find_target

DESCRIPTION = ("Train a GPT on a text file or a prepared dataset, from a fresh init or from pretrained weights "
               "(--init_from). Every field of the config is a flag: --config=NAME, then --field=value.")


def main(argv: list[str] | None = None, command: bool = False) -> None:
    """Train as `python -m jaxgpt.train ARGV` does; `command`: this process is that command's own (it may restart
    itself, see below)."""
    argv = sys.argv[1:] if argv is None else argv
    options = {"prog": "python -m jaxgpt.train", "description": DESCRIPTION}
    config, compile_for = parse_train_command(argv, **options)
    run_config = RunDir(config.out_dir).config_file
    if config.resume and run_config.is_file() and not any(arg.startswith("--config") for arg in argv):
        config = parse_train_args([f"--config={run_config}", *argv], **options)  # the run's own config + new flags
    if compile_for:
        return compile_run(config, compile_for)
    compile_cache.enable_default()
    if not worth_keeping(config):  # kept, blocks this large fragment the heap (jaxgpt/system/allocator.py)
        if command and not config.multihost and jax.default_backend() == "cpu":
            allocator.restart_with_huge_pages()  # their page faults: ~20% of the sweep's l step
        allocator.use_default_malloc()
    with stop_on_signals() as stop:
        result = train(config, stop=stop)
    if result.interrupted:
        if sharding.is_main_process():
            print(f"interrupted at step {int(result.state.step)}, checkpoint saved; resume with: python -m "
                  f"jaxgpt.train --out_dir={shlex.quote(config.out_dir)} --resume", file=sys.stderr)
        sys.exit(stop.exit_code)


def compile_run(config: TrainConfig, target_name: str) -> None:
    """--compile_for: the run's programs compiled for the target, here; a table, and exit 1 if one does not fit."""
    target = find_target(target_name)
    compile_only()
    report = check_train(config, target)
    print(report.format())
    if problem := report.fit_problem():
        raise JaxgptError(problem)


def entry_point() -> None:
    """The `jaxgpt-train` console script and `python -m jaxgpt.train`."""
    run_cli(lambda argv: main(argv, command=True))


if __name__ == "__main__":
    entry_point()
