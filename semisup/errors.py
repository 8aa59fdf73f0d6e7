"""User errors and how every command-line entry point reports them.

A mistake in what the user asked for or gave (a flag, a config file, a data folder, a checkpoint)
and an ordinary fault of the machine (a full disk, a removed or read-only folder: ``OSError``) end
in one line on stderr and a non-zero exit, on every rank; anything else is a bug and keeps its
traceback. Exit codes: 2 = the command as given cannot run (a setting, a run directory);
1 = the run failed on its inputs or on the way (data, checkpoint, network, non-finite loss);
128 + N = stopped by signal N after writing a checkpoint (143 SIGTERM, 140 SIGUSR2, 130 SIGINT), or
interrupted by a second Ctrl-C (130).
"""
from __future__ import annotations

import argparse
import errno
import functools
import sys

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
# What to check, by the errno of an OSError that reached a command.
_OS_HINTS = dict(
    ENOSPC=" (the disk is full: free space, then rerun the same command)",
    EDQUOT=" (over the disk quota: free space, then rerun the same command)",
    EACCES=" (no permission: choose a folder you can write to)",
    EPERM=" (no permission: choose a folder you can write to)",
    EROFS=" (a read-only file system: choose a writable folder)",
    ENOENT=" (removed while the command ran, or never there)",
    EEXIST=" (a file is in the way where a folder is needed)",
    ENOTDIR=" (a file is in the way where a folder is needed)", EISDIR=" (a folder where a file is needed)",
    ELOOP=" (a symbolic link where the run writes a file of its own: remove the link)",
)


def printable(text: str, limit: int = 4000) -> str:
    """``text`` safe for a terminal: control characters (an escape sequence from a run file, a
    newline inside a value) shown as ``\\x1b``-style escapes, and at most ``limit`` characters, so
    a string read from a file someone else made can neither drive the terminal nor flood it."""
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown) - limit} more characters)"


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
            print(f"error: {printable(str(err))}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:  # a second Ctrl-C (the first writes a checkpoint and stops by itself)
            print("error: interrupted by Ctrl-C; a run resumes from its last checkpoint.pt when the same command runs "
                  "again", file=sys.stderr)
            return EXIT_INTERRUPTED
        except OSError as err:  # an ordinary fault: a full disk, a removed or read-only folder, a permission
            where = f": {err.filename}" if getattr(err, "filename", None) else ""
            hint = _OS_HINTS.get(errno.errorcode.get(err.errno or 0, ""), "")
            print(printable(f"error: {err.strerror or err}{where}{hint}"), file=sys.stderr)
            return EXIT_FAILURE
    return wrapped


class Parser(argparse.ArgumentParser):
    """argparse for every command: a mistake in the flags is one line, ``error: ...`` naming the
    flag and where the help is, exit code 2, instead of argparse's usage block (the usage is in
    ``--help``)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")
