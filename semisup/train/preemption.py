"""A checkpoint at every signal that stops a run: the scheduler's and the person's at the terminal.

Who sends what:

- **SIGTERM**: Slurm, at ``scancel``, ``scontrol requeue``, preemption (``PreemptMode=REQUEUE`` or
  ``CANCEL``; at the start of a ``GraceTime``) and the time limit, followed by SIGKILL ``KillWait``
  seconds later (30 by default); also ``kill``, ``docker stop``, systemd.
- **SIGUSR2**: Slurm, ``--signal-delay-s`` before the time limit (``#SBATCH --signal=USR2@120``, set
  by ``jobs/submit.py``), and at preemption only where the site sets
  ``SlurmctldParameters=preempt_send_user_signal``.
- **SIGINT**: Ctrl-C at a terminal.

While the loop trains, the handler only records the signal: a checkpoint written from inside a
signal handler could catch the weights half-way through an optimizer step. The loop asks
:meth:`SignalCheckpoint.requested` after every step. One process acts on its own flag; several
agree through an all-reduce of their flags over the CPU control group, posted at one step and
read at the next (so no device sync, and every process stops after the same step). The loop then
writes its checkpoint and calls :meth:`SignalCheckpoint.hand_over`. Before the first step and after
the last (:meth:`SignalCheckpoint.stop_at_once`), the checkpoint on disk already holds the run's
state, and a signal hands over at once: a final evaluation longer than KillWait is not lost to
SIGKILL. A signal during a per-epoch evaluation is acted on when it ends.

Handing over, with one question to Slurm (``scontrol show job``):

- in a submitit job on Slurm, SIGUSR2 goes to submitit's handler, which requeues the job (counting
  time-outs); SIGTERM too when Slurm still runs the job and is not preempting it (a signal only:
  ``scancel --signal=TERM``, a ``kill``); when Slurm is itself ending, requeuing or preempting the
  job (``scancel``, ``scontrol requeue``, preemption) the job just stops and Slurm's decision stands;
- otherwise the run stops with one line saying how to resume (:class:`Preempted`, exit code 128 +
  the signal's number).

A second Ctrl-C before the step ends stops at once, without a checkpoint; any signal that arrives
while the checkpoint is written waits for the write to finish.
"""
from __future__ import annotations

import enum
import signal
import subprocess
import threading

import torch

from semisup import distributed as D
from semisup import scheduler
from semisup.errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class Preempted(UserError, RuntimeError):
    """Stopped by a signal after writing a checkpoint; the exit code is 128 + the signal's number."""

    def __init__(self, message: str, signum: int, exit_code: int | None = None):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum if exit_code is None else exit_code  # submitit's own, where it requeued


class Stop(enum.IntEnum):
    """Why the processes agreed to stop (the largest any of them had)."""
    NONE = 0
    SIGNAL = 1  # checkpoint, then hand over
    LOCK_LOST = 2  # another run took the folder over: stop without writing into it


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class SignalCheckpoint:
    """Context manager catching SIGTERM, SIGUSR2 and SIGINT while training. Enter it before the data
    loaders start. ``lock`` (the main process's :class:`semisup.train.runlock.HeldLock`) is
    watched too: when another run took it over, every process stops."""

    def __init__(self, dist: D.Dist | None = None, lock=None):
        self.dist = dist or D.Dist()
        self.lock = lock
        self.received: int | None = None
        self.saving = False  # while the checkpoint is written, every signal waits for it
        self.at_once_step: int | None = None  # set: the checkpoint holds this step, hand over at a signal
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
        if self.at_once_step is not None and not self.saving:
            self.hand_over(self.at_once_step, written=False)

    def _restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self.previous = {}

    def stop_at_once(self, step: int | None) -> None:
        """From now on a signal hands over at once (``step``: what checkpoint.pt holds), or, with
        None, at the next step boundary again. A signal already received hands over now."""
        self.at_once_step = step
        if step is not None and self.received is not None:
            self.hand_over(step, written=False)

    def requested(self) -> Stop:
        """Whether to stop after this step, and why. Called after every step by every process."""
        lost = self.lock is not None and self.lock.lost is not None
        local = Stop.LOCK_LOST if lost else Stop.SIGNAL if self.received is not None else Stop.NONE
        if self.dist.world == 1:
            return local
        agreed = Stop.NONE
        if self._pending is not None:
            flag, work = self._pending
            work.wait()
            agreed = Stop(int(flag.item()))
        flag = torch.tensor([int(local)], dtype=torch.int64)
        self._pending = (flag, D.all_reduce_control(flag, op=torch.distributed.ReduceOp.MAX))
        if agreed == Stop.SIGNAL and self.received is None:
            self.received = signal.SIGTERM  # another process was signalled: stop as it does
        return agreed

    def hand_over(self, step: int, written: bool = True) -> None:
        """After the checkpoint (``written``: by this stop; else the one on disk holds ``step``): pass
        the stop to the scheduler's requeue where one waits for it, else raise :class:`Preempted`
        with the command to resume. Never returns."""
        signum = self.received or signal.SIGTERM
        requeue = self.previous.get(signal.SIGUSR2)  # submitit's checkpoint_and_try_requeue in a submitit job
        self._restore()
        job = scheduler.this_job()
        state = scheduler.scontrol_job(job.id, timeout_s=5) if job.slurm and self.dist.is_main else None
        only_a_signal = state is not None and state.state == "RUNNING" and not state.preempting and (
            state.restarts or 0) == job.restarts
        stop = f"stopped by {signal_name(signum)} at step {step}" + (
            " after writing checkpoint.pt" if written else " (checkpoint.pt holds it)" if step else " before training")
        if callable(requeue) and (signum == signal.SIGUSR2 or (signum == signal.SIGTERM and only_a_signal)):
            said, exit_code = self._requeue(requeue)
            raise Preempted(f"{stop}; {said}", signum, exit_code)
        raise Preempted(f"{stop}; {self._hint(signum, job, state, only_a_signal)}", signum)

    def _requeue(self, requeue) -> tuple[str, int | None]:
        """submitit's handler: checkpoint() -> scontrol requeue -> sys.exit (on the first process;
        it returns on the others). What happened, in words, and the exit code submitit chose (its
        local executor requeues on its own code)."""
        try:
            requeue(signal.SIGUSR2, None)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else None
            return "submitit requeued the job: it resumes from this step", code
        except (subprocess.SubprocessError, OSError, RuntimeError) as err:  # requeue refused, or too many time-outs
            last = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            return f"the job was not requeued ({last}); submit the same command again to resume from it", None
        return "the first process hands the job to submitit's requeue", None

    @staticmethod
    def _hint(signum: int, job: scheduler.ThisJob, state: scheduler.JobState | None, only_a_signal: bool) -> str:
        if not job.slurm or signum == signal.SIGINT or state is None or only_a_signal:
            return "rerun the same command to resume from it"
        if (state.restarts or 0) > job.restarts:
            preempted = " (preempted)" if state.preempting else ""
            return f"Slurm is requeuing job {job.id}{preempted}: it resumes from this step"
        return (f"Slurm is ending job {job.id} ({state.state}{', preempted' if state.preempting else ''}): submit the "
                "same command again to resume from this step")
