"""Command-line flags for every `TrainConfig` field: `--config=NAME` first, then `--field=value` overrides.

Model fields (`--n_layer`, ...) and training fields (`--batch_size`, ...) share one flat namespace.
Mistakes raise `UsageError` with one line (and the closest flag for a misspelling).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from jaxgpt.config import TrainConfig, load_config
from jaxgpt.errors import UsageError
from jaxgpt.model import GPTConfig

DERIVED_FIELDS = {"vocab_size"}  # set from the data, not by the user


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes raise UsageError (one line, exit status 2) instead of exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _converter(name: str, tp: Any):
    """A function turning the command-line string into a value of type `tp`."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        inner = _converter(name, next(a for a in args if a is not type(None)))
        return lambda raw: None if raw.lower() in ("none", "") else inner(raw)
    if typing.get_origin(tp) is Literal:
        def choice(raw: str) -> str:
            if raw not in args:
                raise argparse.ArgumentTypeError(f"choose one of {', '.join(map(str, args))}, got {raw!r}")
            return raw
        return choice
    if tp is bool:
        def boolean(raw: str) -> bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")
        return boolean
    if tp in (int, float, str):
        def scalar(raw: str):
            try:
                return tp(raw)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {raw!r}") from None
        scalar.__name__ = tp.__name__
        return scalar
    raise TypeError(f"no command-line parser for field {name}: {tp}")


def _flag_fields() -> dict[str, tuple[str, Any]]:
    """Flag name -> (section, type): 'model' for GPTConfig fields, 'train' for TrainConfig ones."""
    fields = {n: ("model", t) for n, t in _field_types(GPTConfig).items() if n not in DERIVED_FIELDS}
    for name, tp in _field_types(TrainConfig).items():
        if name != "model":
            fields[name] = ("train", tp)
    return fields


def _build_parser(prog: str, description: str, base: TrainConfig, config_name: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=config_name,
                        help="config name in configs/ or path to a .py file (default: %(default)s)")
    model_group = parser.add_argument_group("model (GPTConfig)")
    train_group = parser.add_argument_group("training (TrainConfig)")
    for name, (section, tp) in _flag_fields().items():
        default = getattr(base.model if section == "model" else base, name)
        group = model_group if section == "model" else train_group
        nargs = "?" if tp is bool else None  # `--resume` alone means true
        group.add_argument(f"--{name}", type=_converter(name, tp), default=default, nargs=nargs,
                           const=True if tp is bool else None, metavar=name.upper(), help="(default: %(default)s)")
    return parser


def check_unknown_flags(argv: list[str], known: set[str]) -> None:
    """Reject a `--flag` not in `known`, naming the closest known one."""
    for token in argv:
        if not token.startswith("--") or token == "--":
            continue
        key = token[2:].split("=", 1)[0].replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean --{close[0]}?" if close else "; see --help for the list"
            raise UsageError(f"unknown flag --{key}{hint}")


def parse_train_args(argv: list[str], prog: str = "jaxgpt.train", description: str = "",
                     default_config: str = "small") -> TrainConfig:
    """argv -> TrainConfig: the named config with every given flag applied, validated."""
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--config", default=default_config)
    config_name = pre.parse_known_args(argv)[0].config
    base = load_config(config_name)
    parser = _build_parser(prog, description, base, config_name)
    check_unknown_flags(argv, {a.dest for a in parser._actions} | {"help"})
    args = vars(parser.parse_args(argv))
    fields = _flag_fields()
    model_overrides = {k: v for k, v in args.items() if fields.get(k, ("",))[0] == "model"}
    train_overrides = {k: v for k, v in args.items() if fields.get(k, ("",))[0] == "train"}
    model = dataclasses.replace(base.model, **model_overrides)
    return dataclasses.replace(base, model=model, **train_overrides)
