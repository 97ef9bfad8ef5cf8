"""Errors that are the user's to fix: jaxgpt.cli.run_cli prints them as one line with their exit status."""

from __future__ import annotations


class JaxgptError(Exception):
    """A failure with a message meant for the user; no traceback is shown for it."""

    exit_code = 1


class UsageError(JaxgptError, ValueError):
    """Bad input from the user (flag, file, argument): exit status 2."""

    exit_code = 2
