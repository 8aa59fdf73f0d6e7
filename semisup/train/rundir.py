"""The run directory: its name, what may happen to a run already there, and the lock that keeps
two runs out of one directory (:mod:`semisup.train.runlock`).

Nothing in a run directory is changed before the new run has proved it can start: with
``--overwrite`` a finished run's files are moved to ``replaced-<time>/`` inside it only after the
data and the model were built, never deleted.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from semisup.config import Config, differing_keys, load_saved_config
from semisup.errors import UsageError
from semisup.files import check_writable_folder, linked_out
from semisup.runfiles import RunFiles
from semisup.train import runlock

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
    check_own_files(path)
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


def check_own_files(path: Path) -> None:
    """Refuse a run folder where a file the run writes is a symbolic link out of it (a run would
    append to, or read as its own, a file somewhere else)."""
    files = RunFiles(path)
    for name in (*RunFiles.WRITTEN, RunFiles.JOBS, RunFiles.LOCK):
        target = linked_out(Path(files.root) / name, path)
        if target is not None:
            raise RunDirError(f"{path / name} is a symbolic link to {target}, outside the run folder: a run writes "
                              "only files of its own; remove the link (or move the file into the folder)")


def check_lock(path: Path) -> None:
    """Refuse a directory that a live run holds (:mod:`semisup.train.runlock`), naming the holder."""
    runlock.check_lock(path, RunDirError)


def acquire_lock(path: Path) -> runlock.HeldLock:
    """Hold ``path`` for this run until ``.release()``; a lock whose holder is gone is taken over."""
    return runlock.acquire_lock(path, RunDirError)
