"""Which code a run used: the commit and whether the tree was edited, recorded in every run's
config.yaml. A queued job runs a snapshot of the tracked files (``semisup.cluster.snapshot``),
which has no ``.git``: its ``SNAPSHOT.json`` marker says what it was taken from."""
from __future__ import annotations

import subprocess
from pathlib import Path

from semisup.config import PROJECT_ROOT
from semisup.files import parse_json, read_text

MARKER = "SNAPSHOT.json"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def code_version(root: Path = PROJECT_ROOT) -> dict:
    """{commit, dirty, snapshot} of the code under ``root``: read from a snapshot's marker, else
    from git (commit 'unknown' outside a git checkout)."""
    marker = root / MARKER
    if marker.is_file():
        info = parse_json(read_text(marker))
        return dict(commit=info["commit"], dirty=info["dirty"], snapshot=str(root))
    try:
        commit = git(root, "rev-parse", "HEAD").strip()
        dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        return dict(commit="unknown", dirty=None, snapshot=None)
    return dict(commit=commit, dirty=dirty, snapshot=None)


