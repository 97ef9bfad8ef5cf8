"""Errors that are the user's to fix, and how command-line tools report them."""

from __future__ import annotations

import sys
from collections.abc import Callable


class JaxgptError(Exception):
    """A failure with a message meant for the user; no traceback is shown for it."""

    exit_code = 1


class UsageError(JaxgptError, ValueError):
    """Bad input from the user (flag, file, argument): exit status 2."""

    exit_code = 2


def run_cli(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a CLI `main`, turning a `JaxgptError` into one line on stderr and its exit status."""
    try:
        main(argv)
    except JaxgptError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
