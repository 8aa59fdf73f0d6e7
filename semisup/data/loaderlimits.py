"""What loader worker processes need of the machine, checked before a run (and its dry run) starts,
and a worker's death said in one line.

Workers hand their batches to the main process through shared memory (``/dev/shm``), each tensor
as an open file descriptor under torch's default sharing strategy. A container's 64 MiB
``/dev/shm`` or a low ``ulimit -n`` used to end a run at its first batches with a worker's
traceback ("Bus error", "Too many open files"), blaming neither the limit nor naming the fix.
"""
from __future__ import annotations

import errno
import logging
import os
import resource
from typing import Iterator

import torch

from semisup.errors import UserError

log = logging.getLogger(__name__)

PREFETCH = 4  # batches each worker prepares ahead (semisup.data.datasets.make_loader)
TENSORS_PER_BATCH = 8  # a training batch's tensors, each a descriptor in flight
SHM = "/dev/shm"


class LoaderLimitError(UserError, RuntimeError):
    """The machine cannot hold what the loader workers hand over, or a worker died."""


def batch_bytes(image_size: int, labeled: int, unlabeled: int, pair_on_labeled: bool) -> list[int]:
    """Bytes of one batch of each stream (uint8 images; the unlabeled stream's view and augmented view)."""
    image = 3 * image_size * image_size
    streams = [labeled * image * (3 if pair_on_labeled else 1)]
    if unlabeled:
        streams.append(unlabeled * 2 * image)
    return streams


def check_loader_limits(workers: int, streams: list[int], shm: str = SHM) -> str | None:
    """Refuse, in one line naming the limit and the fix, a ``/dev/shm`` too small for the batches
    in flight (``streams``: one batch's bytes per stream); raise a low open-file limit where the
    hard limit allows, else share batches through files instead of descriptors. Returns the line
    to log where something was changed."""
    if workers == 0:
        return None
    in_flight = sum(streams) * workers * PREFETCH
    try:
        st = os.statvfs(shm)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = None  # no /dev/shm (not Linux): torch uses what the system has
    if free is not None and in_flight > free:
        raise LoaderLimitError(
            f"loader: --workers {workers} x {len(streams)} stream(s) x {PREFETCH} batches in flight take about "
            f"{in_flight / 2**20:.0f} MiB of shared memory, but {shm} has {free / 2**20:.0f} MiB free (a container's "
            "default is 64 MiB): give it more (docker run --shm-size 16g; Slurm: a larger /dev/shm), or pass "
            "--workers 0 (batches made in the main process, slower)")
    return _open_files(workers * len(streams))


def _open_files(worker_processes: int) -> str | None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 256 + worker_processes * (PREFETCH * TENSORS_PER_BATCH + 8)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return None
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return f"open files: the limit (ulimit -n) was {soft}, raised to {need} for the loader workers' batches"
    if torch.multiprocessing.get_sharing_strategy() == "file_descriptor":
        torch.multiprocessing.set_sharing_strategy("file_system")
    return (f"open files: the limit (ulimit -n) is {soft} (at most {hard}), below the ~{need} the loader workers' "
            f"batches take as descriptors: they are shared through files in {SHM} instead")


class GuardedStream:
    """An endless iterator of batches (``batches``, drawn from the loader iterator ``source``),
    with a loader worker's death or error in one line: a worker that died (out of shared memory,
    killed) or raised a user error (no readable image) ends the run with the stream's name and
    the fix, never a worker traceback or a hang. ``close()`` stops its workers (the trainer closes
    every stream when one fails, so no sibling's worker speaks after the error line)."""

    def __init__(self, batches: Iterator[dict], stream: str, source=None):
        self.batches, self.stream, self.source = batches, stream, source

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        try:
            return next(self.batches)
        except UserError as err:  # raised in a worker: its text holds the worker's traceback
            lines = [line for line in str(err).strip().splitlines() if line.strip()]
            raise type(err)(f"{self.stream} stream: {lines[-1].split(': ', 1)[-1] if lines else err}") from None
        except OSError as err:
            if err.errno == errno.EMFILE:
                raise LoaderLimitError(f"{self.stream} stream: too many open files (ulimit -n {_soft_limit()}); "
                                       "raise the limit or pass --workers 0") from None
            raise
        except RuntimeError as err:
            if "DataLoader worker" not in str(err):
                raise
            memory = "shared memory" in str(err) or "Bus error" in str(err)
            hint = (f"{SHM} is too small for the batches in flight: pass --workers 0 or give it more" if memory
                    else "its own error is above, if it printed one; --workers 0 runs without worker processes")
            raise LoaderLimitError(f"{self.stream} stream: a loader worker died ({str(err).splitlines()[0]}); "
                                   f"{hint}") from None

    def close(self) -> None:
        shutdown = getattr(self.source, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def guarded(batches: Iterator[dict], stream: str, source=None) -> GuardedStream:
    return GuardedStream(batches, stream, source)


def _soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
