"""The run directory: its name, what may happen to a run already there, and the lock that keeps
two runs out of one directory.

Nothing in a run directory is changed before the new run has proved it can start: with
``--overwrite`` a finished run's files are moved to ``replaced-<time>/`` inside it only after the
data and the model were built, never deleted.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from semisup.config import Config, differing_keys, load_saved_config
from semisup.errors import UsageError
from semisup.files import check_writable_folder
from semisup.runfiles import RunFiles

RUN_FILES = RunFiles.WRITTEN  # what --overwrite moves aside


class RunDirError(UsageError, RuntimeError):
    """The run directory cannot be used as asked (finished, other settings, held by another run)."""


def default_run_dir(cfg: Config) -> Path:
    dataset = "demo" if cfg.is_demo else Path(cfg.data).name
    # The demo starts from its shipped SwAV-style weights; a run from scratch is named apart.
    start = "-scratch" if cfg.is_demo and cfg.pretrained is None else ""
    return Path("runs") / f"{dataset}-{cfg.method}-frac{cfg.labeled_fraction:g}-seed{cfg.seed}{start}"


@dataclass
class RunDir:
    path: Path
    replaces_finished: bool  # --overwrite of a finished run: its files move aside once the new run starts
    note: str = ""  # what happens to the directory, said at the start of the run


def prepare_run_dir(cfg: Config, check_holder: bool = True) -> RunDir:
    """Pick the run directory and check it, changing nothing: resume an unfinished run there,
    refuse to replace a finished one (unless --overwrite), refuse to resume with different
    settings (compared with config.yaml, or with the checkpoint's own record where config.yaml is
    missing), refuse a directory another live run holds (``check_holder``: the main process
    only; the others of a multi-process run would find the lock their main process just took)."""
    explicit = cfg.run_dir is not None
    if cfg.val_cache is not None:
        check_writable_folder(cfg.val_cache, "--val-cache")
    path = Path(cfg.run_dir) if explicit else default_run_dir(cfg)
    note = ""
    if not explicit:  # the default name moves on to -2, -3, ... rather than touch a finished run
        base, n = path, 1
        while (RunFiles(path).final).exists() and not cfg.overwrite:
            n += 1
            path = base.with_name(f"{base.name}-{n}")
        if n > 1:
            note = (
                f"{base} holds a finished run: this is a new run in {path} (rerun with --run-dir {base} --overwrite to "
                "replace it instead)"
            )
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--run-dir {path} is a file, not a folder")
    if check_holder:
        check_lock(path)
    finished = (RunFiles(path).final).exists()
    if finished and not cfg.overwrite:
        raise RunDirError(
            f"{path} already holds a finished run (final.json); choose another --run-dir or pass --overwrite "
            "(the finished run's files are then moved to a replaced-<time>/ folder inside it, not deleted)"
        )
    if not finished and (RunFiles(path).checkpoint).exists():
        previous = _saved_config(path)
        changed = differing_keys(previous, cfg) if previous is not None else []
        if changed:
            raise RunDirError(f"{path} holds an unfinished run with different settings ({', '.join(changed)}); "
                              "resume it with the same flags, or choose another --run-dir")
    if not note:
        note = ("resuming the unfinished run in " if (RunFiles(path).checkpoint).exists() and not finished else
                "replacing the finished run in " if finished else "new run in ") + str(path)
    return RunDir(path, finished and cfg.overwrite, note)


def _saved_config(path: Path) -> Config | None:
    """The settings the run in ``path`` trained with: the checkpoint's own record (what the
    weights were trained under), else config.yaml. A config.yaml that disagrees with the
    checkpoint was edited by hand: refused, naming the keys, rather than believed."""
    from semisup import checkpoint as ckpt
    from semisup.config import config_from_dict
    try:
        state = ckpt.load(RunFiles(path).checkpoint)
        recorded = (
            config_from_dict(state["config"])
            if isinstance(state, dict) and isinstance(state.get("config"), dict)
            else None
        )
    except Exception:  # unreadable: reported by the resume itself
        recorded = None
    if not (RunFiles(path).config).exists():
        return recorded
    written = load_saved_config(RunFiles(path).config)
    edited = differing_keys(written, recorded) if recorded is not None else []
    if edited:
        raise RunDirError(
            f"{path / 'config.yaml'} disagrees with the checkpoint's own record of its settings ({', '.join(edited)}): "
            "the checkpoint's are what the run trained with; restore config.yaml, or resume with those settings"
        )
    return recorded or written


def archive_previous(path: Path) -> Path | None:
    """Move a replaced run's files to ``path/replaced-<time>/`` (never delete); returns it."""
    present = [name for name in RUN_FILES if (path / name).exists()]
    if not present:
        return None
    archive = path / time.strftime("replaced-%Y%m%d-%H%M%S")
    archive.mkdir()
    for name in present:
        shutil.move(str(path / name), str(archive / name))
    return archive


def _job_id() -> str | None:
    """The scheduler job this process belongs to (Slurm's, or submitit's local job)."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def _holder(path: Path) -> dict | None:
    try:
        return json.loads((RunFiles(path).lock).read_text())
    except (OSError, ValueError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the process that wrote the lock still runs. A lock from another host is taken as
    alive unless it belongs to the same Slurm job (a requeued job finding its own folder)."""
    if holder.get("job") and holder.get("job") == _job_id():
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return int(holder["pid"]) != os.getpid()


def check_lock(path: Path) -> None:
    """Refuse a directory that a live run holds, naming the holder."""
    holder = _holder(path)
    if holder is not None and _alive(holder):
        raise RunDirError(
            f"{path} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, since"
            f" {holder.get('started')}); wait for it, choose another --run-dir, or delete {RunFiles(path).lock} if that"
            " run is gone"
        )


def acquire_lock(path: Path) -> None:
    """Hold ``path`` for this run (a stale lock of a finished process is taken over)."""
    path.mkdir(parents=True, exist_ok=True)
    check_lock(path)
    record = dict(pid=os.getpid(), host=socket.gethostname(), job=_job_id(),
                  started=time.strftime("%Y-%m-%d %H:%M:%S"))
    # The record is written whole under a temporary name, then linked (or, over a stale lock, renamed)
    # into place: a reader never sees half a lock; the temporary name never outlives this call.
    tmp = path / f"{RunFiles.LOCK}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(record))
        try:
            os.link(tmp, RunFiles(path).lock)  # atomic: fails if another run created the lock meanwhile
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and _alive(holder):
                raise RunDirError(
                    f"{path} is in use by another run (pid {holder.get('pid')} on {holder.get('host')})"
                ) from None
            os.replace(tmp, RunFiles(path).lock)  # stale: take it over
    finally:
        tmp.unlink(missing_ok=True)  # after a link, or a failed write (a full disk)


def release_lock(path: Path) -> None:
    holder = _holder(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        (RunFiles(path).lock).unlink(missing_ok=True)
