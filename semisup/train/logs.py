"""The run's log: the console (rank 0 only, at INFO for this package) and train.log in the run folder."""
from __future__ import annotations

import errno
import logging
import re
import sys
from pathlib import Path

from semisup.files import open_for_append


class _SafeFormatter(logging.Formatter):
    """Log lines safe for a terminal and a UTF-8 file: a file name that is not UTF-8 (its
    surrogates) and control characters (an escape sequence in a name) shown as escapes; line
    breaks (tracebacks) kept. Unescaped, the first ended the run with UnicodeEncodeError."""
    _CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).encode("utf-8", "backslashreplace").decode("utf-8")
        return self._CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


LOG_FORMAT = _SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


class _CurrentStderr(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr`` is when a line is logged (a
    progress bar's redirect, a caller that swapped it), never to a stream closed since."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(is_main: bool) -> None:
    """Console logging: only this package speaks at INFO, and only on rank 0."""
    root = logging.getLogger()
    if getattr(root, "_semisup_configured", False):
        return
    handler = _CurrentStderr()
    handler.setFormatter(LOG_FORMAT)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("semisup").setLevel(logging.INFO if is_main else logging.WARNING)
    root._semisup_configured = True


class RunLogFile(logging.StreamHandler):
    """train.log, appended without following a link out of the run folder; a full disk ends this copy
    of the log with one line (the console keeps it), never a traceback for every record."""

    def __init__(self, path: Path):
        super().__init__(open_for_append(path))
        self.path = path

    def handleError(self, record) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            return super().handleError(record)
        logging.getLogger().removeHandler(self)
        sys.stderr.write(f"warning: {self.path} could not be written ({err.strerror or err}); the log goes on in the "
                         "console only\n")


def log_to_file(path: Path) -> logging.Handler | None:
    """Also write the log to ``path`` (train.log), from the moment the run has started; None where
    the file cannot be made (a full disk: the console keeps the log; a link: refused earlier)."""
    try:
        handler = RunLogFile(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise
        sys.stderr.write(f"warning: {path} could not be written ({err.strerror or err}); the log goes on in the "
                         "console only\n")
        return None
    handler.setFormatter(LOG_FORMAT)
    logging.getLogger().addHandler(handler)
    return handler
