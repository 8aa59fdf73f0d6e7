"""The code a run used: snapshots for queued jobs, and the version every run records.

A job queued today may start next week; it must run the code as it was at submission. The
snapshot is exactly git's tracked files as they are in the working tree (the commit plus any
uncommitted edits to tracked files), as submitit's ``RsyncSnapshot`` takes it, copied without
rsync. Never in it: logs, runs, results (earlier snapshots live under ``jobs/logs``), untracked
files. Its ``SNAPSHOT.json`` holds the commit and whether the tree was dirty; a run started from
the snapshot reads it there (the snapshot has no ``.git``), a run from a checkout asks git.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from semisup.config import PROJECT_ROOT
from semisup.errors import UsageError
from semisup.files import write_text_atomic
from semisup.version import MARKER, code_version
from semisup.version import git as _git

log = logging.getLogger(__name__)

REPO = PROJECT_ROOT
# Folders never copied, tracked or not: they grow with every run and submission.
EXCLUDED = ("jobs/logs/", "runs/", "results/")


def tracked_files(root: Path = REPO) -> list[str]:
    """Paths (relative to ``root``) of the files and symbolic links git tracks that exist in the
    working tree, outside :data:`EXCLUDED`."""
    names = _git(root, "ls-files", "-z", "--cached").split("\0")
    return sorted(
        n for n in names if n and not n.startswith(EXCLUDED) and ((root / n).is_symlink() or (root / n).is_file())
    )


def take_snapshot(dest: Path, root: Path = REPO) -> dict:
    """Copy the tracked files of ``root`` to ``dest`` and write ``dest/SNAPSHOT.json``.

    Returns the marker's content: commit, dirty, files, bytes, untracked (source files left out
    because git does not track them, so the caller can warn)."""
    try:
        files = tracked_files(root)
        untracked = [n for n in _git(root, "ls-files", "-z", "--others", "--exclude-standard").split("\0")
                     if n.endswith((".py", ".yaml")) and not n.startswith(EXCLUDED)]
    except (OSError, subprocess.CalledProcessError) as err:
        raise UsageError(
            f"{root} is not a git checkout ({err}); the code snapshot copies git's tracked files: submit from a "
            "clone, or pass --no-snapshot to run the live folder"
        ) from err
    size, outside = 0, []
    resolved_root = root.resolve()
    for name in files:
        source, target = root / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            # A tracked link stays a link, as git stores it: what it points to is never copied in
            # (a link to a folder or to a file outside the repository is not the code's content).
            target.symlink_to(os.readlink(source))
            if not source.resolve().is_relative_to(resolved_root):
                outside.append(name)
            continue
        shutil.copy2(source, target)
        size += target.stat().st_size
    if outside:
        log.warning(
            "tracked links pointing outside the repository stay links in the snapshot (the job reads their targets "
            "when it runs): %s",
            ", ".join(outside),
        )
    info = dict(code_version(root), files=len(files), bytes=size, untracked=sorted(untracked), links_outside=outside,
                taken=time.strftime("%Y-%m-%d %H:%M:%S"), source=str(root))
    info.pop("snapshot")
    write_text_atomic(dest / MARKER, json.dumps(info, indent=1))  # the job reads it for its code record
    return info
