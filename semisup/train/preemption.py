"""A checkpoint at the signal that comes before preemption or the time limit.

Slurm sends SIGUSR2 ``--signal-delay-s`` seconds before it stops a job (``#SBATCH
--signal=USR2@120``, set by ``jobs/submit.py``). Without this module the run would lose the
steps since its last periodic checkpoint. The handler itself only records the signal: a
checkpoint written from inside a signal handler could catch the weights half-way through an
optimizer step. The training loop asks :meth:`SignalCheckpoint.requested` at each step boundary,
writes its checkpoint, and :meth:`SignalCheckpoint.hand_over` then passes the signal on to the
handler that was installed before (submitit's: requeue the job and exit). A run started
without submitit stops with one line saying how to resume.
"""
from __future__ import annotations

import signal
import threading

import torch

from semisup import distributed as D
from semisup.errors import UserError

SIGNAL = signal.SIGUSR2


class Preempted(UserError, RuntimeError):
    """Stopped by SIGUSR2 after writing a checkpoint (no scheduler handler to requeue it)."""


class SignalCheckpoint:
    """Context manager catching SIGUSR2 while training. Install it before the data loaders
    start: their worker processes inherit this flag-only handler instead of a requeueing one."""

    def __init__(self):
        self.received: int | None = None
        self.previous = None
        self.installed = False

    def __enter__(self) -> "SignalCheckpoint":
        if threading.current_thread() is threading.main_thread():  # Python only allows handlers there
            self.previous = signal.signal(SIGNAL, self._record)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _record(self, signum: int, frame) -> None:
        self.received = signum

    def _restore(self) -> None:
        if self.installed:
            signal.signal(SIGNAL, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False

    def requested(self, dist: D.Dist, sync_point: bool) -> bool:
        """Whether to checkpoint and stop now. One process decides at any step; several agree
        (any one signalled) only at ``sync_point`` steps, so that all of them save together."""
        if dist.world == 1:
            return self.received is not None
        if not sync_point:
            return False
        flag = torch.tensor([float(self.received is not None)], device=dist.device)
        return bool(D.all_reduce_sum(flag).item() > 0)

    def hand_over(self, step: int) -> None:
        """After the checkpoint: call the earlier handler (submitit requeues the job and exits),
        else stop with the command to resume. Never returns."""
        previous = self.previous
        self._restore()
        if callable(previous):
            previous(SIGNAL, None)  # submitit: checkpoint() -> scontrol requeue -> sys.exit; returns on ranks > 0
        raise Preempted(
            f"stopped by SIGUSR2 at step {step} after writing checkpoint.pt; rerun the same command to resume from it"
        )
