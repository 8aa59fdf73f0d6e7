"""The lock that keeps two runs out of one run folder, and knows its owner.

``.lock`` says who trains in the folder: the host (and its boot), the pid with the process's start
time (a pid alone is reused by unrelated processes), the scheduler's job (Slurm's id, the array
task, how often Slurm requeued it) and a heartbeat the holder refreshes every
:data:`HEARTBEAT_S` seconds. A lock is stale, and taken over with a log line, once its holder is
gone:

- on its own host: the host rebooted since, or (in the same pid namespace) its pid no longer runs
  or runs another process (another start time);
- a Slurm job: Slurm requeued it since the lock was written (its restart count moved on), or
  says the job no longer holds its nodes (it ended, was cancelled, waits in the queue, or is
  unknown to the controller), or the job runs but the heartbeat stopped more than
  :data:`LEASE_S` ago (the process died inside a live allocation);
- otherwise (no scheduler answers for it): its heartbeat is older than :data:`LEASE_S`.

A live holder is respected, whoever it is: another job, or another run of the same Slurm
allocation. A lock that cannot be read (a file system error) is never taken for free. Taking a
stale lock over, and each heartbeat, happen under a takeover guard (an exclusive ``mkdir``), so
two runs never both take over one lock, and a heartbeat never overwrites a newer holder's
record. A holder that finds its lock taken over is told (:attr:`HeldLock.lost`) and stops.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from semisup import scheduler
from semisup.files import RunFileError, named, parse_json, read_text, write_json_atomic
from semisup.runfiles import RunFiles

log = logging.getLogger(__name__)

HEARTBEAT_S = 60  # how often the holder rewrites its heartbeat
LEASE_S = 600  # a heartbeat older than this is a dead holder where nothing else can tell (ten missed beats)
GUARD_STALE_S = 60  # a takeover guard older than this was left by a killed process
READ_TRIES = 3


class LockHeld(RuntimeError):
    """Raised (as the caller's own error type, see :func:`check_lock`) when a live run holds the folder."""


class LockUnreadable(OSError):
    """The lock exists but cannot be read (a file system error): nothing may be concluded from it."""


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's pid namespace (containers on one host have their own pids)."""
    try:
        return os.readlink("/proc/self/ns/pid")
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
        token=uuid.uuid4().hex, host=socket.gethostname(), boot=boot_id(), pid_ns=_pid_namespace(), pid=os.getpid(),
        process_start=process_start(os.getpid()), job=job.id, scheduler=job.scheduler, restarts=job.restarts,
        started=time.strftime("%Y-%m-%d %H:%M:%S"), heartbeat=time.time(), lease_s=LEASE_S,
    )


def read_holder(path: Path) -> dict | None:
    """The lock's record; None when there is no lock; ``{"damaged": True}`` for a file that is not
    a record (edited by hand). Raises :class:`LockUnreadable` when the file cannot be read (a
    transient NFS error such as ESTALE is retried first)."""
    lock = RunFiles(path).lock
    for attempt in range(READ_TRIES):
        try:
            text = read_text(lock, 1 << 16)
            break
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:  # bytes no version of the lock wrote: edited by hand or damaged
            return {"damaged": True}
        except RunFileError as err:  # a folder or a FIFO where the lock belongs: nothing may be concluded
            raise LockUnreadable(errno.EIO, f"the run lock cannot be read ({err})", str(lock)) from err
        except OSError as err:
            if attempt == READ_TRIES - 1:
                raise LockUnreadable(err.errno or errno.EIO, f"the run lock cannot be read ({err})", str(lock)) from err
            time.sleep(0.2)
    try:
        holder = parse_json(text)
    except ValueError:
        return {"damaged": True}
    if not isinstance(holder, dict):
        return {"damaged": True}
    try:  # a record of an older format has no heartbeat: the file's last write stands in for it
        holder["written"] = os.stat(lock).st_mtime
    except OSError:
        pass
    return holder


def holder_alive(holder: dict) -> tuple[bool, str]:
    """(whether the holder may still be training, why), per the rules in the module docstring."""
    if holder.get("damaged"):
        return False, "a damaged lock file (not a record)"
    who = describe(holder)
    here = holder.get("host") == socket.gethostname()
    if here and holder.get("boot") and boot_id() and holder["boot"] != boot_id():
        return False, f"{who}: this host rebooted since"
    # On its host, in the same pid namespace, the process itself answers; a container's pids do not.
    if here and holder.get("pid_ns", _pid_namespace()) == _pid_namespace():
        alive, how = _process_state(holder)
        if alive is not None:
            return alive, f"{who}: {how}"
    if holder.get("scheduler") == "slurm" and holder.get("job"):
        verdict = _slurm_holder_alive(holder, who)
        if verdict is not None:
            return verdict
    return _heartbeat_alive(holder, who)


def _process_state(holder: dict) -> tuple[bool | None, str]:
    """On the holder's host: (whether its process still runs, in words); None when that cannot be
    told (no pid recorded)."""
    try:
        pid = int(holder["pid"])
    except (KeyError, TypeError, ValueError):
        return None, "no pid recorded"
    if pid == os.getpid():
        return False, "this very process (an earlier attempt of it)"
    started = process_start(pid)
    if started is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False, "the process is gone"
        except PermissionError:
            pass  # another user's live process, and no /proc here to compare its start
        return True, "the process runs"
    if holder.get("process_start") not in (None, started):
        return False, f"pid {pid} is now another process"
    return True, "the process runs"


def _slurm_holder_alive(holder: dict, who: str) -> tuple[bool, str] | None:
    """The verdict Slurm gives on a holder that is a Slurm job; None when Slurm does not answer."""
    me, job, restarts = scheduler.this_job(), str(holder["job"]), _restarts(holder)
    if job == me.id and restarts < me.restarts:
        return False, f"{who}: this job was requeued since"
    state = scheduler.scontrol_job(job)
    if state is None:
        return None
    if state.restarts is not None and state.restarts > restarts:
        return False, f"{who}: Slurm requeued job {job} since (now {state.state})"
    if not state.active:
        return False, f"{who}: Slurm job {job} is {state.state}"
    stale_beat = _heartbeat_alive(holder, who)
    if not stale_beat[0] and state.state != "SUSPENDED":
        return False, f"{who}: Slurm job {job} is {state.state} but the run's heartbeat stopped ({stale_beat[1]})"
    return True, f"{who}: Slurm job {job} is {state.state}"


def _restarts(holder: dict) -> int:
    value = holder.get("restarts")
    return value if isinstance(value, int) else 0


def _heartbeat_alive(holder: dict, who: str) -> tuple[bool, str]:
    beat = holder.get("heartbeat")
    if not isinstance(beat, (int, float)) or isinstance(beat, bool):
        # An older lock format (no heartbeat) was blocking the folder for good: its file's last
        # write is the last sign of life.
        beat = holder.get("written")
        if not isinstance(beat, (int, float)):
            return True, f"{who}: no heartbeat recorded; nothing can tell whether it runs"
        who = f"{who} (a lock of an older format, without a heartbeat)"
    age = time.time() - beat
    lease = holder.get("lease_s") if isinstance(holder.get("lease_s"), (int, float)) else LEASE_S
    if age > lease:
        return False, f"{who}: its last heartbeat is {age / 60:.0f} min old (lease {lease / 60:.0f} min)"
    return True, f"{who}: its heartbeat is {age:.0f} s old"


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['job']}" if holder.get("scheduler") == "slurm" and holder.get("job") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{job}, since {holder.get('started')}"


def _in_use(path: Path, why: str, error: type[Exception]) -> Exception:
    return error(
        f"{path} is in use by another run ({why}); wait for it or choose another --run-dir (the lock is taken over "
        f"once that run is gone: its process or its Slurm job ended, or no heartbeat for {LEASE_S // 60} min)"
    )


def check_lock(path: Path, error: type[Exception] = LockHeld) -> None:
    """Refuse (raising ``error``) a folder that a live run holds, naming the holder and why it is live."""
    holder = _readable_holder(path, error)
    if holder is not None:
        alive, why = holder_alive(holder)
        if alive:
            raise _in_use(path, why, error)


def _readable_holder(path: Path, error: type[Exception]) -> dict | None:
    try:
        return read_holder(path)
    except LockUnreadable as err:
        raise error(f"{err.filename}: {err.strerror}; check the file system, then rerun") from None


@contextlib.contextmanager
def _guard(path: Path, error: type[Exception]):
    """Exclusive while a lock is taken over or its heartbeat written: ``mkdir`` is atomic."""
    guard = path / f"{RunFiles.LOCK}.guard"
    for _ in range(50):
        try:
            guard.mkdir()
            break
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > GUARD_STALE_S:
                    guard.rmdir()  # left by a process killed inside the guard
                    continue
            time.sleep(0.1)
    else:
        raise error(f"{path}: another process is taking over the run lock right now; rerun in a minute")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            guard.rmdir()


class HeldLock:
    """This process's hold on a run folder: a heartbeat thread refreshes the record until :meth:`release`.

    ``lost`` becomes a sentence when another run took the lock over (this run's holder was judged
    gone): the training loop stops then, without writing into the folder again."""

    def __init__(self, path: Path, record: dict, took_over: str | None = None):
        self.path, self.record = path, record
        self.took_over = took_over  # whose stale lock this one replaced, and why it was stale
        self.lost: str | None = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # one of heartbeat and release at a time
        self._released = False
        self._warned = False
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _owner(self) -> bool | None:
        """Whether the lock is still this process's: True, False (someone else's, or gone), None (unreadable)."""
        try:
            holder = read_holder(self.path)
        except LockUnreadable:
            return None
        return holder is not None and holder.get("token") == self.record["token"]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._mutex:
                if self._released:
                    return
                try:
                    with _guard(self.path, OSError):
                        owner = self._owner()
                        if owner is False:
                            holder = read_holder(self.path) or {}
                            self.lost = f"the run lock was taken over by {describe(holder)}"
                            return
                        if owner is None:
                            continue  # unreadable now: try again at the next beat
                        self.record["heartbeat"] = time.time()
                        write_json_atomic(RunFiles(self.path).lock, self.record)
                except OSError as err:  # a full disk: the lease still holds for a while; said once
                    if not self._warned:
                        log.warning("%s: the run lock's heartbeat could not be written (%s)", self.path, err)
                        self._warned = True

    def release(self) -> None:
        self._stop.set()
        with self._mutex:  # waits for a heartbeat in progress; none follows
            self._released = True
            if self._owner():
                RunFiles(self.path).lock.unlink(missing_ok=True)


def acquire_lock(path: Path, error: type[Exception] = LockHeld) -> HeldLock:
    """Hold ``path`` for this process: a lock whose holder is gone is taken over (``took_over``
    says whose, for the run's log); a live holder raises ``error``."""
    path.mkdir(parents=True, exist_ok=True)
    check_lock(path, error)
    record, took_over = owner_record(), None
    # The record is written whole under a name of its own, then linked into place (or, over a stale
    # lock, renamed there under the guard): a reader never sees half a lock.
    tmp = path / f"{RunFiles.LOCK}.{socket.gethostname()}.{os.getpid()}.{record['token'][:8]}"
    try:
        try:
            tmp.write_text(json.dumps(record))
        except OSError as err:  # a full disk: the line names the lock, not a bare "No space left"
            raise named(err, RunFiles(path).lock) from None
        try:
            os.link(tmp, RunFiles(path).lock)  # atomic: fails if another run created the lock meanwhile
        except FileExistsError:
            with _guard(path, error):
                holder = _readable_holder(path, error)
                if holder is not None:
                    alive, why = holder_alive(holder)
                    if alive:
                        raise _in_use(path, why, error) from None
                    took_over = why
                os.replace(tmp, RunFiles(path).lock)
    finally:
        tmp.unlink(missing_ok=True)  # after a link, or a failed write (a full disk)
    return HeldLock(path, record, took_over)
