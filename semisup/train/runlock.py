"""The lock that keeps two runs out of one run folder, and knows its owner.

``.lock`` says who trains in the folder: the host (and its boot), the pid with the process's start
time (a pid alone is reused by unrelated processes), the scheduler's job (Slurm's id, the array
task, how often Slurm requeued it) and a heartbeat the holder refreshes every
:data:`HEARTBEAT_S` seconds. A lock is stale, and taken over with a log line, once its holder is
gone:

- on this host: its pid no longer runs, runs another process (another start time), or the host
  rebooted since;
- a Slurm job elsewhere: Slurm says the job no longer holds its nodes (it ended, was cancelled,
  waits in the queue after a requeue, or is unknown to the controller), or was requeued since
  the lock was written (its restart count moved on);
- otherwise (no scheduler answers for it): its heartbeat is older than :data:`LEASE_S`.

A live holder is respected, whoever it is: another job, or another run started in the same Slurm
allocation.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from semisup import scheduler
from semisup.files import write_json_atomic
from semisup.runfiles import RunFiles

log = logging.getLogger(__name__)

HEARTBEAT_S = 60  # how often the holder rewrites its heartbeat
LEASE_S = 600  # a lock whose heartbeat is older is stale where nothing else can tell (ten missed beats)


class LockHeld(RuntimeError):
    """Raised (as the caller's own error type, see :func:`check_lock`) when a live run holds the folder."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (``/proc/PID/stat`` field 22), None
    where there is no such process or no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in (...) may hold spaces
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_record() -> dict:
    """Who this process is, as the lock records it."""
    job = scheduler.this_job()
    return dict(
        token=uuid.uuid4().hex, host=socket.gethostname(), boot=_boot_id(), pid=os.getpid(),
        process_start=process_start(os.getpid()), job=job.id, scheduler=job.scheduler, restarts=job.restarts,
        started=time.strftime("%Y-%m-%d %H:%M:%S"), heartbeat=time.time(), lease_s=LEASE_S,
    )


def read_holder(path: Path) -> dict | None:
    """The lock's record, None when there is none or it is not a record (half a write of an old
    version, an edit): such a lock holds nothing."""
    try:
        holder = json.loads(RunFiles(path).lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def holder_alive(holder: dict) -> tuple[bool, str]:
    """(whether the holder may still be training, why), per the rules in the module docstring."""
    me = scheduler.this_job()
    who = describe(holder)
    if holder.get("host") == socket.gethostname():
        return _local_holder_alive(holder, who)
    if holder.get("scheduler") == "slurm" and holder.get("job"):
        if holder["job"] == me.id and _restarts(holder) < me.restarts:
            return False, f"{who}: this job was requeued since"
        state = scheduler.scontrol_job(str(holder["job"]))
        if state is not None:
            if state.restarts is not None and state.restarts > _restarts(holder):
                return False, f"{who}: Slurm requeued that job since (now {state.state})"
            if state.active:
                return True, f"{who}: Slurm job {holder['job']} is {state.state}"
            return False, f"{who}: Slurm job {holder['job']} is {state.state}"
    return _heartbeat_alive(holder, who)


def _restarts(holder: dict) -> int:
    value = holder.get("restarts")
    return value if isinstance(value, int) else 0


def _local_holder_alive(holder: dict, who: str) -> tuple[bool, str]:
    boot = _boot_id()
    if holder.get("boot") and boot and holder["boot"] != boot:
        return False, f"{who}: this host rebooted since"
    try:
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return _heartbeat_alive(holder, who)
    if pid == os.getpid():
        return False, f"{who}: this process"
    started = process_start(pid)
    if started is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False, f"{who}: the process is gone"
        except PermissionError:
            pass  # another user's live process (no /proc here to compare its start)
        return True, f"{who}: the process runs"
    if holder.get("process_start") not in (None, started):
        return False, f"{who}: pid {pid} is now another process"
    return True, f"{who}: the process runs"


def _heartbeat_alive(holder: dict, who: str) -> tuple[bool, str]:
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)):
        return True, f"{who}: no heartbeat recorded; nothing can tell whether it runs"
    age = time.time() - beat
    lease = holder.get("lease_s") if isinstance(holder.get("lease_s"), (int, float)) else LEASE_S
    if age > lease:
        return False, f"{who}: its last heartbeat is {age / 60:.0f} min old (lease {lease / 60:.0f} min)"
    return True, f"{who}: its heartbeat is {age:.0f} s old"


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['job']}" if holder.get("scheduler") == "slurm" and holder.get("job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('started')}"


def check_lock(path: Path, error: type[Exception] = LockHeld) -> None:
    """Refuse (raising ``error``) a folder that a live run holds, naming the holder and why it is live."""
    holder = read_holder(path)
    if holder is None:
        return
    alive, why = holder_alive(holder)
    if alive:
        raise error(
            f"{path} is in use by another run ({why}); wait for it or choose another --run-dir (the lock is taken "
            f"over once that run is gone: its process ended, its Slurm job ended, or no heartbeat for "
            f"{LEASE_S // 60} min)"
        )


class HeldLock:
    """This process's hold on a run folder: a heartbeat thread refreshes the record until :meth:`release`."""

    def __init__(self, path: Path, record: dict, took_over: str | None = None):
        self.path, self.record = path, record
        self.took_over = took_over  # whose stale lock this one replaced, and why it was stale
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def ours(self) -> bool:
        holder = read_holder(self.path)
        return holder is not None and holder.get("token") == self.record["token"]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self.ours():
                    log.warning("%s: the run lock was taken over by another run; this run keeps training",
                                self.path)
                    return
                self.record["heartbeat"] = time.time()
                write_json_atomic(RunFiles(self.path).lock, self.record)
            except OSError as err:  # a full disk: the lease still holds for a while; say so once
                if not self._warned:
                    log.warning("%s: the run lock's heartbeat could not be written (%s)", self.path, err)
                    self._warned = True

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.ours():
            RunFiles(self.path).lock.unlink(missing_ok=True)


def acquire_lock(path: Path, error: type[Exception] = LockHeld) -> HeldLock:
    """Hold ``path`` for this process: a lock whose holder is gone is taken over (``took_over``
    says whose, for the run's log); a live holder raises ``error``."""
    path.mkdir(parents=True, exist_ok=True)
    check_lock(path, error)
    record, took_over = owner_record(), None
    # The record is written whole under a temporary name, then linked (or, over a stale lock, renamed)
    # into place: a reader never sees half a lock; the temporary name never outlives this call.
    tmp = path / f"{RunFiles.LOCK}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(record))
        try:
            os.link(tmp, RunFiles(path).lock)  # atomic: fails if another run created the lock meanwhile
        except FileExistsError:
            holder = read_holder(path)
            if holder is not None:
                alive, why = holder_alive(holder)
                if alive:
                    raise error(f"{path} is in use by another run ({why})") from None
                took_over = why
            os.replace(tmp, RunFiles(path).lock)
    finally:
        tmp.unlink(missing_ok=True)  # after a link, or a failed write (a full disk)
    return HeldLock(path, record, took_over)
