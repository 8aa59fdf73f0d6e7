"""What the scheduler says: which job this process belongs to, and the state of any job, from the
Slurm command that answers.

Slurm's controller (``squeue``, ``scontrol show job``) knows a job while it is queued or runs and
for ``MinJobAge`` after it ends; ``sacct`` answers for older jobs where accounting is configured
(and lags on busy clusters). Every query here has a time limit and prints nothing: a command that
is missing, fails or times out is "no answer" (``None``, or a job left out of the answer), and the
caller falls back to the run's own files. Nothing here parses a job's pickles.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

QUERY_TIMEOUT_S = 15
# States in which the job's processes may still run (and write into its run folder).
ACTIVE = frozenset(
    {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"}
)
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})


@dataclass(frozen=True)
class JobState:
    """One job as a Slurm command reported it."""
    state: str  # Slurm's base state: RUNNING, PENDING, COMPLETED, CANCELLED, FAILED, TIMEOUT, ...
    source: str  # the command that answered: squeue, scontrol or sacct
    reason: str | None = None  # why it pends or ended (Slurm's Reason), None when there is none
    exit_code: str | None = None  # "code:signal", known once it ended
    restarts: int | None = None  # how often Slurm requeued it
    preempting: bool = False  # Slurm has chosen it for preemption (PreemptTime set; its GraceTime may run)

    @property
    def active(self) -> bool:
        """Its processes may be running: it holds its nodes."""
        return self.state in ACTIVE

    @property
    def queued(self) -> bool:
        return self.state in QUEUED


@dataclass(frozen=True)
class ThisJob:
    """The scheduler job of this process, from the environment the scheduler gave it."""
    id: str | None  # Slurm's (an array task as ``ARRAYID_TASK``, as submitit and squeue name it) or submitit's local
    scheduler: str | None  # "slurm", "local" or None (no scheduler)
    restarts: int = 0  # SLURM_RESTART_COUNT: 0 at the first start, n after n requeues

    @property
    def slurm(self) -> bool:
        return self.scheduler == "slurm"


def this_job(environ=None) -> ThisJob:
    env = os.environ if environ is None else environ
    if env.get("SLURM_JOB_ID"):
        array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        job = f"{array}_{task}" if array and task else env["SLURM_JOB_ID"]
        return ThisJob(job, "slurm", _int(env.get("SLURM_RESTART_COUNT"), 0))
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return ThisJob(env["SUBMITIT_LOCAL_JOB_ID"], "local")
    return ThisJob(None, None)


def _int(text, default=None):
    try:
        return int(text)
    except (TypeError, ValueError):
        return default


def _run(argv: list[str], timeout_s: float = QUERY_TIMEOUT_S) -> subprocess.CompletedProcess | None:
    """A Slurm command's result, or None when it is missing or takes too long."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_output(argv: list[str]) -> str | None:
    """stdout of a Slurm command that succeeded, else None."""
    proc = _run(argv)
    return proc.stdout if proc is not None and proc.returncode == 0 else None


def fields(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value2`` (scontrol's one-line output) as a dict; values hold no spaces
    except in a few free-text keys this module does not read."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", line))


def _base_state(text: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'RUNNING+' -> 'RUNNING'."""
    return re.split(r"[\s+]", text.strip(), maxsplit=1)[0].upper()


def scontrol_job(job_id: str, timeout_s: float = QUERY_TIMEOUT_S) -> JobState | None:
    """``scontrol show job``: the controller's record; state UNKNOWN when the controller answers
    that it does not know the job (it ended more than MinJobAge ago); None without an answer."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)], timeout_s)
    if proc is None:
        return None
    if proc.returncode != 0 or not proc.stdout.strip():
        forgotten = "invalid job id" in proc.stderr.lower()
        return JobState("UNKNOWN", "scontrol", "not known to the controller") if forgotten else None
    record = fields(proc.stdout.splitlines()[0])
    if "JobState" not in record:
        return None
    reason = record.get("Reason")
    return JobState(_base_state(record["JobState"]), "scontrol", None if reason in (None, "None") else reason,
                    record.get("ExitCode"), _int(record.get("Restarts")),
                    preempting=record.get("PreemptTime", "None") not in ("None", "Unknown", ""))


def controller_jobs(job_ids: list[str]) -> dict[str, JobState]:
    """The jobs the controller still holds (queued, running, or ended within MinJobAge), by id."""
    if not job_ids:
        return {}
    out = slurm_output(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(job_ids),
                "-O", "JobArrayID:64|,State:32|,Reason:128|,RestartCnt:12|"])
    found = {}
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 4 and parts[0]:
            found[parts[0]] = JobState(_base_state(parts[1]), "squeue", None if parts[2] in ("", "None") else parts[2],
                                       None, _int(parts[3]))
    for job_id, state in list(found.items()):
        if not state.active and not state.queued:  # ended: its exit code from the controller's full record
            full = scontrol_job(job_id)
            if full is not None and full.state != "UNKNOWN":
                found[job_id] = JobState(state.state, "squeue", state.reason, full.exit_code, state.restarts)
    return found


def accounting_jobs(job_ids: list[str]) -> dict[str, JobState]:
    """``sacct``'s record of the jobs (empty where accounting is not configured)."""
    if not job_ids:
        return {}
    out = slurm_output(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode,Reason"])
    found = {}
    for line in (out or "").splitlines():
        parts = line.split("|")
        if len(parts) >= 3 and parts[0]:
            reason = parts[3] if len(parts) > 3 and parts[3] not in ("", "None") else None
            found[parts[0]] = JobState(_base_state(parts[1]), "sacct", reason, parts[2] or None)
    return found


def slurm_jobs(job_ids: list[str]) -> dict[str, JobState]:
    """The state of each job some Slurm command still knows: the controller first (current, and
    the only answer without accounting), ``sacct`` for the jobs the controller has forgotten."""
    found = controller_jobs(job_ids)
    missing = [j for j in job_ids if j not in found]
    found.update({k: v for k, v in accounting_jobs(missing).items() if k in missing})
    return found


def slurm_job(job_id: str) -> JobState | None:
    return slurm_jobs([str(job_id)]).get(str(job_id))
