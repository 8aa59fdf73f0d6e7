"""Small files a run or a job writes and later reads back: written atomically, checked when read.

A kill or a full disk in the middle of a write must never leave a half-written ``final.json`` or
``job.json`` that later reads as a finished run or crashes a status table: writes go to a
temporary file in the same folder and are renamed over the target. A file read back that is
missing its content, is not JSON, or has the wrong shape is reported in one line naming it.
"""
from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

from semisup.errors import UserError


class RunFileError(UserError, ValueError):
    """A file a run wrote that cannot be read back (damaged, truncated, edited by hand)."""


def write_atomic(path: Path, write) -> None:
    """``write(temporary_path)``, then rename it to ``path``: a reader never sees half a file; on
    failure (a kill, a full disk) the temporary file is removed and ``path`` keeps its previous
    content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise named(err, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def named(err: OSError, path: Path) -> OSError:
    """``err`` with the file it is about (a failed ``write`` on a full disk names none)."""
    if err.filename:
        return err
    return OSError(err.errno, err.strerror or str(err), str(path))


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`write_atomic` of a text."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=1))


# The most a small run file (JSON, YAML, CSV, a line log) may hold before it is refused unread:
# a run writes kilobytes; a larger file was not written by a run, and parsing it could take minutes.
RUN_FILE_LIMIT = 64 << 20


def open_regular(path: Path, error: type = None):
    """``path`` opened to read bytes, only if it is a regular file: a FIFO or device unpacked from
    an archive would block its reader for ever (it is opened without blocking, then checked).
    ``error`` (RunFileError by default) names the file otherwise; FileNotFoundError passes."""
    error = error or RunFileError
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise error(f"{path}: {kind}, not a regular file; give a file, or move it aside")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bounded(path: Path, limit: int = RUN_FILE_LIMIT, error: type = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`); ``error``
    naming the file and its size otherwise."""
    error = error or RunFileError
    with open_regular(path, error) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: larger than {limit >> 10} KiB, far more than such a file holds; not read (move it "
                    "aside, or give the right file)")
    return data


def read_text(path: Path, limit: int = RUN_FILE_LIMIT, error: type = None) -> str:
    """:func:`read_bounded` as UTF-8 text (UnicodeDecodeError for other bytes)."""
    return read_bounded(path, limit, error).decode("utf-8")


def read_csv(path: Path):
    """A CSV table a run wrote (``metrics.csv``) as a DataFrame: a file cut to nothing is an empty
    table (a kill before its header); one that cannot be parsed is RunFileError naming it."""
    import pandas as pd
    data = read_bounded(path)
    if not data.strip():
        return pd.DataFrame()
    try:
        return pd.read_csv(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise RunFileError(f"{path}: not a CSV table a run wrote ({type(err).__name__}); move it aside") from err


def parse_json(text: str | bytes) -> object:
    """``json.loads`` whose every failure is a ValueError: a file of 100,000 nested brackets makes
    the parser raise RecursionError, which no reader expects from a damaged file."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to be a file a run wrote") from None


def read_json(path: Path, kind: type | tuple[type, ...] = dict, what: str = "") -> object:
    """The JSON value in ``path``, which must be of ``kind``; RunFileError naming the file otherwise."""
    path = Path(path)
    try:
        value = parse_json(read_text(path))
    except FileNotFoundError:
        raise RunFileError(f"{path}: no such file") from None
    except RunFileError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunFileError(f"{path}: unreadable or not JSON ({type(err).__name__}){what}") from err
    if not isinstance(value, kind):
        raise RunFileError(
            f"{path}: expected a JSON {getattr(kind, '__name__', 'value')}, got {type(value).__name__}{what}"
        )
    return value


def read_lines(path: Path, what: str) -> list[str]:
    """The lines of a text file the user gave (``what`` says which, e.g. '--val-labels'); one line
    naming it when it is missing, a folder, unreadable or not text."""
    path = Path(path)
    try:
        return read_text(path, error=UserError).splitlines()
    except UserError as err:  # not a regular file, or far too large
        raise UserError(f"{what} {err}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path}: not a text file ({err.reason} at byte {err.start})") from err
    except IsADirectoryError:
        raise UserError(f"{what} {path}: a folder, not a file") from None
    except OSError as err:
        raise UserError(f"{what} {path}: cannot be read ({err.strerror or err})") from err


def check_writable_folder(path: Path, flag: str) -> None:
    """Refuse, in one line naming ``flag``, a folder that cannot be made or written: a file in its
    place, or a nearest existing ancestor that is not a writable folder. Creates nothing."""
    if not str(path).strip():
        raise UserError(f"{flag}: an empty path; give a folder (or leave {flag} out)")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not a folder this user can write; choose another")


def open_for_append(path: Path):
    """``path`` opened to append text, never through a symbolic link (O_NOFOLLOW): a run appends
    only to files of its own, not to whatever a link in its folder points at (an ``OSError``
    ELOOP, one line from the commands, where a link is in the way)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "a")


def append_lines(path: Path, lines: list[str]) -> None:
    """Append ``lines`` to a line log (``eval.jsonl``) in one write, never through a link. A last
    line cut by a kill is ended first, so it stays one unreadable line and the new ones are whole
    (glued onto it, they would be lost with it)."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        size = os.fstat(fd).st_size
        cut = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        os.write(fd, (("\n" if cut else "") + "".join(line + "\n" for line in lines)).encode())
    except OSError as err:
        raise named(err, Path(path)) from None
    finally:
        os.close(fd)


def linked_out(path: Path, folder: Path) -> str | None:
    """Where ``path`` (a file of ``folder``'s run) leads if it is a symbolic link out of ``folder``,
    else None. A link inside the folder is the folder's own business."""
    path = Path(path)
    if not path.is_symlink():
        return None
    target = path.resolve()
    return None if target.is_relative_to(Path(folder).resolve()) else str(target)
