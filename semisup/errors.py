"""User errors and how every command-line entry point reports them.

A mistake in what the user asked for or gave (a flag, a config file, a data folder, a checkpoint)
ends in one line on stderr and a non-zero exit, on every rank; anything else is a bug and keeps
its traceback. Exit codes: 2 = the command as given cannot run (a setting, a run directory);
1 = the run failed on its inputs or on the way (data, checkpoint, network, non-finite loss).
"""
from __future__ import annotations

import functools
import sys

EXIT_FAILURE, EXIT_USAGE = 1, 2


class UserError(Exception):
    """Reported in one line, exit code 1."""
    exit_code = EXIT_FAILURE


class UsageError(UserError):
    """Reported in one line, exit code 2."""
    exit_code = EXIT_USAGE


def cli(main):
    """Wrap a ``main(argv) -> int`` so user errors print ``error: ...`` and return their code."""
    @functools.wraps(main)
    def wrapped(argv=None) -> int:
        try:
            return main(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
    return wrapped
