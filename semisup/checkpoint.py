"""Atomic checkpoints of plain types and tensors (loadable with ``weights_only=True``)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from semisup.files import named
from semisup.runfiles import RunFiles


def previous(path: Path) -> Path:
    """Where the generation before ``path`` is kept (``checkpoint.prev.pt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_atomic(obj: dict, path: Path, keep_previous: bool = False) -> None:
    """Write to a temporary file in the same folder, then rename: a run killed mid-write
    leaves the previous checkpoint intact. With ``keep_previous`` the replaced file stays as
    :func:`previous` (one generation), so a checkpoint damaged later on disk is not the only one;
    ``path`` exists at every moment. The checkpoint is serialised in memory first and written with
    Python's own I/O, so a full disk is an ``OSError`` naming the file (torch's writer reports it as
    one of several RuntimeErrors)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as err:  # a full disk: no half-written temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise named(err, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if keep_previous and path.exists():
        link = path.with_name(f".{path.name}.prev{os.getpid()}")
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, previous(path))
    os.replace(tmp, path)


def load(path: Path) -> dict:
    """A checkpoint's dict of plain types and tensors (``weights_only``: nothing in it executes),
    read only from a regular file (a FIFO in a received run folder would block for ever)."""
    from semisup.files import open_regular
    with open_regular(path) as f:
        return torch.load(f, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    state = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """The generators' states a checkpoint saved. A run resumed where fewer GPUs are visible than
    when it was saved (8 then, 1 now) restores the GPUs it has, in order, and leaves the others'
    states unused (``set_rng_state_all`` indexes a GPU per saved state: IndexError); where none is
    visible, only the CPU's."""
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda") or []
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for index, generator_state in enumerate(saved[:visible]):
        torch.cuda.set_rng_state(generator_state, index)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files an earlier process of this run left when it was killed mid-write
    (``.checkpoint.pt.tmp<pid>`` and the like). Only called by a process holding the run's lock."""
    own = (RunFiles.CHECKPOINT, RunFiles.BEST, RunFiles.FINAL, RunFiles.METRICS, RunFiles.PROGRESS, RunFiles.CONFIG)
    stale = [
        p
        for name in own
        for pattern in (f".{name}.tmp*", f".{name}.prev*")
        for p in Path(folder).glob(pattern)
        if p.is_file()
    ]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
