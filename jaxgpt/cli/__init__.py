"""What every command (`python -m jaxgpt.X`, jaxgpt/X.py) shares: flag parsing, one-line errors and exit codes.

Library modules hold no argument parsing; each command turns flags into a library call. Mistakes raise
`UsageError` (one line on stderr, exit status 2); failures during a run exit with 1 (see `run_cli`).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import signal
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any

import jax
import simple_parsing

from jaxgpt.core.config import HOW_TO_COMPUTE, GPTConfig, TrainConfig, load_config, sizes_unused_by
from jaxgpt.core.mfu import step_activation_bytes
from jaxgpt.system import allocator, targets, xla_flags
from jaxgpt.system.errors import JaxgptError, UsageError
from jaxgpt.system.interrupt import Terminated
from jaxgpt.system.logs import quiet_checkpoint_failures


class ArgumentParser(simple_parsing.ArgumentParser):
    """simple-parsing's parser (flags from dataclass fields, their descriptions as help) whose mistakes raise
    UsageError with one line instead of printing usage and exiting.

    Hand-written here, because neither argparse (before Python 3.14) nor simple-parsing suggests a flag for a
    misspelled one: the parser records every flag it is given, and an unknown one gets the closest of them.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, add_config_path_arg=False, **kwargs)
        self.flags: set[str] = {"help"}

    def add_argument(self, *names: str, **kwargs: Any):
        self.flags.update(name[2:] for name in names if name.startswith("--"))
        return super().add_argument(*names, **kwargs)

    def add_config_arguments(self, cls: type, dest: str, default: Any) -> None:
        """A flag for every field of the dataclass `cls` (nested ones flattened) but those marked `cmd=False`."""
        self.flags.update(_flag_fields(cls))
        self.add_arguments(cls, dest=dest, default=default)

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        for token in args:
            if token.startswith("--") and token != "--":
                key = token[2:].split("=", 1)[0]
                if key not in self.flags and key.replace("-", "_") not in self.flags:
                    close = difflib.get_close_matches(key, sorted(self.flags), n=1)
                    hint = f"; did you mean --{close[0]}?" if close else "; see --help for the list"
                    raise UsageError(f"unknown flag --{key}{hint}")
        return super().parse_args(args, namespace)

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def _flag_fields(cls: type) -> dict[str, Any]:
    """Flag name -> field type, for every command-line field of `cls` and of the dataclasses nested in it."""
    hints, fields = typing.get_type_hints(cls), {}
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            fields.update(_flag_fields(hints[field.name]))
        elif field.metadata.get("cmd", True):
            fields[field.name] = hints[field.name]
    return fields


def means_none(value: str) -> bool:
    """Whether a flag's value says None: "none" (any case) or nothing, for every tool's optional flags."""
    return value.lower() in ("none", "")


def _none_for_optional(argv: list[str], optional: set[str]) -> list[str]:
    """`--peak_flops=none` (or `=` with nothing) -> `--peak_flops`, which simple-parsing reads as None; it would
    take "none" for a value of the field's type otherwise."""
    out = []
    for i, token in enumerate(argv):
        key, eq, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if key in optional and eq and means_none(value):
            out.append(f"--{key}")
        elif i and argv[i - 1][2:] in optional and means_none(token):
            continue  # `--peak_flops none`
        else:
            out.append(token)
    return out


# With --init_from and no --config: TrainConfig's defaults, with GPT-2's context (the weights' if theirs is shorter).
INIT_FROM_DEFAULTS = TrainConfig(model=GPTConfig(block_size=1024))
# Model flags that --init_from refuses: they would change what the weights mean (block_size may crop).
SHAPE_FLAGS = frozenset(_flag_fields(GPTConfig)) - HOW_TO_COMPUTE - {"block_size"}


COMPILE_FOR_HELP = ("compile the programs this command would run for an accelerator, here, without one (e.g. "
                    "tpu-v5e-8, h100-1; docs/accelerators.md), print their memory and time per device, run nothing")


def parse_train_args(argv: list[str], prog: str = "jaxgpt.train", description: str = "",
                     default_config: str = "small") -> TrainConfig:
    """argv -> TrainConfig: the named config (`--config`) with every given flag applied, validated. With
    `--init_from` and no `--config`, the base is INIT_FROM_DEFAULTS."""
    return parse_train_command(argv, prog, description, default_config)[0]


def parse_train_command(argv: list[str], prog: str = "jaxgpt.train", description: str = "",
                        default_config: str = "small") -> tuple[TrainConfig, str | None]:
    """argv -> (TrainConfig as `parse_train_args` makes it, the --compile_for target's name or None)."""
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--init_from")
    known = pre.parse_known_args(argv)[0]
    config_name = known.config or default_config
    base = INIT_FROM_DEFAULTS if known.init_from and not known.config else load_config(config_name)
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=config_name, metavar="NAME",
                        help="config name in configs/, a .py file defining config = TrainConfig(...), or a run's "
                             "config.json (default: %(default)s; with --init_from, the defaults below with "
                             "block_size 1024)")
    parser.add_argument("--compile_for", metavar="TARGET", help=COMPILE_FOR_HELP)
    parser.add_config_arguments(TrainConfig, dest="train", default=base)
    optional = {name for name, tp in _flag_fields(TrainConfig).items() if type(None) in typing.get_args(tp)}
    namespace = parser.parse_args(_none_for_optional(argv, optional))
    config = namespace.train
    _check_init_from_flags(argv, config)
    _check_flags_that_do_nothing(argv, config)
    return config, namespace.compile_for


def compile_only() -> None:
    """This process compiles for an accelerator and runs nothing: JAX on the CPU, and the environment the TPU and
    GPU plugins need to start without their hardware (jaxgpt.system.targets). Before anything touches a device."""
    for name, value in targets.deviceless_environment().items():
        os.environ.setdefault(name, value)
    jax.config.update("jax_platforms", "cpu")


def _given_flags(argv: list[str]) -> set[str]:
    return {token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")}


def _check_flags_that_do_nothing(argv: list[str], config: TrainConfig) -> None:
    """Refuse flags that would change nothing in this run (and be recorded in its config.json as if they had):
    sizes the model does not have (a bigram's layers), Muon's settings without Muon, min_lr without cosine decay."""
    given, why = _given_flags(argv), {}
    unused, reason = sizes_unused_by(config.model)
    why |= dict.fromkeys(given & unused, reason)
    if config.optimizer != "muon":
        why |= dict.fromkeys({name for name in given if name.startswith("muon_")}, "optimizer is not muon")
    if config.lr_schedule != "cosine":
        why |= dict.fromkeys(given & {"min_lr"}, "lr_schedule is not cosine")
    if why:
        raise UsageError(f"{', '.join(f'--{name}' for name in sorted(why))} would do nothing here "
                         f"({'; '.join(sorted(set(why.values())))}); drop {'it' if len(why) == 1 else 'them'}")


def _check_init_from_flags(argv: list[str], config: TrainConfig) -> None:
    """--init_from starts a new run whose model is the weights': refuse it with --resume, and flags that would
    change the model's shape or meaning, naming them."""
    given = _given_flags(argv)
    if "init_from" in given and config.resume:
        raise UsageError("--init_from starts a new run from pretrained weights and --resume continues the run in "
                         "out_dir from its own checkpoint; choose one")
    shape = sorted(given & SHAPE_FLAGS)
    if config.init_from and not config.resume and shape:
        raise UsageError(f"{', '.join(f'--{name}' for name in shape)} cannot be set with --init_from: the model is "
                         "the weights' (--dropout, --block_size (a smaller one crops), --dtype, --attention, "
                         "--dense_kernel and --query_block may be set)")


def worth_keeping(config: TrainConfig) -> bool:
    """Whether keeping freed memory (jaxgpt.system.allocator) pays for a training run of `config`: not if a step's
    activations exceed KEEP_FREED_LIMIT, nor from pretrained weights (`init_from`: GPT-2's size at least, and their
    shapes are not known before they are read)."""
    activations = step_activation_bytes(config.model, config.batch_size)
    return not config.init_from and activations <= allocator.KEEP_FREED_LIMIT


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a command's `main`, turning a `JaxgptError` into one line on stderr and its exit status."""
    allocator.keep_freed_memory()  # before JAX starts its threads
    xla_flags.set_cpu_flags()  # before its backend starts
    quiet_checkpoint_failures()
    try:
        main(argv)
    except JaxgptError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
