"""A checkpoint at every signal that stops a run: the scheduler's and the person's at the terminal.

Who sends what:

- **SIGTERM**: Slurm, at ``scancel``, ``scontrol requeue``, preemption (``PreemptMode=REQUEUE`` or
  ``CANCEL``) and the time limit, followed by SIGKILL ``KillWait`` seconds later (30 by default);
  also ``kill``, ``docker stop``, systemd.
- **SIGUSR2**: Slurm, ``--signal-delay-s`` before the time limit (``#SBATCH --signal=USR2@120``, set
  by ``jobs/submit.py``), and at preemption only where the site sets
  ``SlurmctldParameters=preempt_send_user_signal``.
- **SIGINT**: Ctrl-C at a terminal.

The handler only records the signal: a checkpoint written from inside a signal handler could catch
the weights half-way through an optimizer step. The loop asks :meth:`SignalCheckpoint.requested`
after every step. One process acts on its own flag; several agree through an all-reduce of their
flags over the CPU control group, posted at one step and read at the next (so no device sync, and
every process stops after the same step). The loop then writes its checkpoint and calls
:meth:`SignalCheckpoint.hand_over`:

- in a submitit job on Slurm, SIGUSR2 goes to submitit's handler, which requeues the job
  (counting time-outs) and exits; SIGTERM too, when Slurm still runs the job (a signal only:
  ``scancel --signal=TERM``, a ``kill``); when Slurm is itself ending or requeuing the job
  (``scancel``, ``scontrol requeue``, preemption) the job just exits and Slurm's decision stands;
- otherwise the run stops with one line saying how to resume (:class:`Preempted`, exit code 128 +
  the signal's number).

A second Ctrl-C before the step ends stops at once, without a checkpoint; any signal that arrives
while the checkpoint is written waits for the write to finish.
"""
from __future__ import annotations

import signal
import threading

import torch

from semisup import distributed as D
from semisup import scheduler
from semisup.errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class Preempted(UserError, RuntimeError):
    """Stopped by a signal after writing a checkpoint; the exit code is 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class SignalCheckpoint:
    """Context manager catching SIGTERM, SIGUSR2 and SIGINT while training. Enter it before the data
    loaders start: their worker processes inherit these flag-only handlers."""

    def __init__(self, dist: D.Dist | None = None):
        self.dist = dist or D.Dist()
        self.received: int | None = None
        self.saving = False  # while the checkpoint is written, every signal waits for it
        self.previous: dict[int, object] = {}
        self._pending: tuple[torch.Tensor, object] | None = None  # the flag all-reduce posted last step

    def __enter__(self) -> "SignalCheckpoint":
        if threading.current_thread() is threading.main_thread():  # Python only allows handlers there
            for signum in SIGNALS:
                current = signal.getsignal(signum)
                if signum == signal.SIGINT and current is signal.SIG_IGN:
                    continue  # started in the background (nohup, &): Ctrl-C is not for this process
                self.previous[signum] = current
                signal.signal(signum, self._record)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None and self._pending is not None:
            self._pending[1].wait()  # every process posted the same all-reduces; none is left open
        self._pending = None
        self._restore()

    def _record(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT and not self.saving:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without a checkpoint
        if self.received is None:
            self.received = signum

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def requested(self) -> bool:
        """Whether to checkpoint and stop after this step. Called after every step by every process."""
        if self.dist.world == 1:
            return self.received is not None
        agreed = False
        if self._pending is not None:
            flag, work = self._pending
            work.wait()
            agreed = bool(flag.item() > 0)
        flag = torch.tensor([float(self.received is not None)])
        self._pending = (flag, D.all_reduce_control(flag))
        if agreed and self.received is None:
            self.received = signal.SIGTERM  # another process was signalled: stop as it does
        return agreed

    def hand_over(self, step: int) -> None:
        """After the checkpoint: pass the stop to the scheduler's requeue where one waits for it, else
        raise :class:`Preempted` with the command to resume. Never returns."""
        signum = self.received or signal.SIGTERM
        requeue = self.previous.get(signal.SIGUSR2)  # submitit's checkpoint_and_try_requeue in a submitit job
        self._restore()
        name, job = signal_name(signum), scheduler.this_job()
        if callable(requeue) and (signum == signal.SIGUSR2 or (signum == signal.SIGTERM and self._only_a_signal(job))):
            # submitit: checkpoint() -> scontrol requeue -> sys.exit; returns on processes other than the first.
            requeue(signal.SIGUSR2, None)
        hint = "rerun the same command to resume from it"
        if job.slurm and signum != signal.SIGINT and self.dist.is_main:
            hint = (f"Slurm is ending or requeuing job {job.id} ({self._slurm_state(job)}): a requeued job resumes "
                    f"from it, and so does the same command submitted again")
        raise Preempted(f"stopped by {name} at step {step} after writing checkpoint.pt; {hint}", signum)

    def _only_a_signal(self, job: scheduler.ThisJob) -> bool:
        """Slurm still runs this job as it started: the SIGTERM was a signal only, not Slurm ending
        or requeuing it (those change its state or its restart count first)."""
        if not job.slurm or not self.dist.is_main:
            return False
        state = scheduler.scontrol_job(job.id)
        return state is not None and state.state == "RUNNING" and (state.restarts or 0) == job.restarts

    @staticmethod
    def _slurm_state(job: scheduler.ThisJob) -> str:
        state = scheduler.scontrol_job(job.id)
        return "no answer from scontrol" if state is None else f"{state.state}, {state.restarts} restart(s)"
