"""A real Slurm for the tests (``tests/slurm/cluster.sh``): start it, submit to it as a user does,
wait for its jobs."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = ROOT / "tests" / "slurm" / "cluster.sh"
CANNOT_INSTALL = 3  # cluster.sh's exit code when apt-get cannot install Slurm and munge


def unavailable() -> str | None:
    """Why a Slurm cluster cannot be started here, or None."""
    if os.environ.get("SEMISUP_SLURM_TESTS") == "0":
        return "SEMISUP_SLURM_TESTS=0"
    if not sys.platform.startswith("linux"):
        return "the test cluster's hosts are Linux network namespaces"
    if os.geteuid() != 0:
        return "starting the test Slurm cluster needs root (network namespaces, a bridge, /etc/hosts)"
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "Slurm is not installed and there is no apt-get to install it"
    return None


def submitted_ids(stdout: str) -> list[str]:
    """Job ids from semisup-submit's 'submitted NAME: job ID, ...' lines."""
    return re.findall(r"^submitted \S+: job (\S+),", stdout, flags=re.M)


class SlurmCluster:
    """Slurm on a head host and two compute hosts; commands run on the head host, as on a login node."""

    def __init__(self, state: Path):
        self.state = state

    def run(self, *argv: str, cwd: Path | None = None, check: bool = True, timeout: float = 300):
        # Jobs take their threads from SLURM_CPUS_PER_TASK (semisup.cpus), as on a user's cluster.
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PYTHONUNBUFFERED"] = "1"
        proc = subprocess.run([str(CLUSTER_SH), "run", str(self.state), "--", *argv], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, *args: str, cwd: Path, check: bool = True):
        """``semisup-submit ARGS`` from ``cwd`` on the head host."""
        command = shutil.which("semisup-submit")
        argv = [command] if command else [sys.executable, str(ROOT / "jobs" / "submit.py")]
        return self.run(*argv, *args, cwd=cwd, check=check)

    def status(self, root: Path) -> str:
        command = shutil.which("semisup-status")
        argv = [command] if command else [sys.executable, str(ROOT / "jobs" / "status.py")]
        return self.run(*argv, str(root)).stdout

    def job(self, job_id: str) -> dict[str, str]:
        """The controller's record of a job (``scontrol show job``), {} once it has forgotten it."""
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0])) if out.strip() else {}

    def state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "UNKNOWN")

    def wait_ended(self, job_ids: list[str], timeout_s: float = 300, restarts: int = 0) -> dict[str, str]:
        """Wait until every job has ended after at least ``restarts`` requeues; returns their states."""
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED")
        deadline = time.time() + timeout_s
        while True:
            records = {j: self.job(j) for j in job_ids}
            states = {j: r.get("JobState", "UNKNOWN") for j, r in records.items()}
            if all(s in ended and int(records[j].get("Restarts", 0)) >= restarts for j, s in states.items()):
                return states
            if time.time() > deadline:
                raise AssertionError(f"jobs did not end in {timeout_s} s: {states}\n{self.logs()}")
            time.sleep(0.5)

    def wait_running(self, job_id: str, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while self.state(job_id) != "RUNNING":
            if time.time() > deadline:
                raise AssertionError(f"job {job_id} did not start: {self.job(job_id)}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The daemons' last log lines, for a failing test's report."""
        parts = []
        for path in sorted((self.state / "log").glob("*.log")):
            parts.append(f"== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)


def wait_for_step(run_dir: Path, step: int, timeout_s: float = 180) -> int:
    """Poll the run's progress.json until it has logged ``step``; returns the step it shows."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            shown = json.loads((run_dir / "progress.json").read_text())["step"]
            if shown >= step:
                return shown
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{run_dir} did not reach step {step}")


def submit_and_hold(run_dir: Path, step: int, submit, timeout_s: float = 300) -> tuple[str, int]:
    """``submit()`` (which returns the job id) while a watcher holds the run's training process
    (SIGSTOP) once it has logged ``step``; returns (the job id, the held pid). The watcher starts
    before the submission: on a loaded machine the submitting command returned only after its
    16-step job had finished (125 s for nine submissions at once), so a stop sent after it came
    too late (a requeue after step 16 of 16; scancel of a job Slurm had forgotten)."""
    held: dict = {}
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                if json.loads((run_dir / "progress.json").read_text())["step"] >= step:
                    pid = json.loads((run_dir / ".lock").read_text())["pid"]
                    os.kill(pid, signal.SIGSTOP)
                    held["pid"] = pid
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        job = submit()
        watcher.join(timeout_s)
    finally:
        done.set()
    if "pid" not in held:
        raise AssertionError(f"{run_dir} did not reach step {step} in {timeout_s} s")
    return job, held["pid"]


def signal_while_held(pid: int, send, signals: tuple[int, ...], timeout_s: float = 120) -> None:
    """``send()`` a stop (an scancel, a requeue, a preemption) to a held process, and let it go on
    (SIGCONT) once one of ``signals`` is pending for it or Slurm continued it itself: the stop
    arrives during the run, however long Slurm takes to deliver it."""
    try:
        send()
        deadline = time.time() + timeout_s
        while time.time() < deadline and not _pending_or_running(pid, signals):
            time.sleep(0.05)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def _pending_or_running(pid: int, signals: tuple[int, ...]) -> bool:
    """Whether one of ``signals`` is pending for the process (thread or process-wide), or it no
    longer is stopped (Slurm sends SIGCONT before it terminates a job), or it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if not fields.get("State", "").strip().startswith("T"):
        return True
    pending = int(fields.get("SigPnd", "0").strip(), 16) | int(fields.get("ShdPnd", "0").strip(), 16)
    return any(pending & (1 << (s - 1)) for s in signals)


def job_logs(log_dir: Path, job_id: str) -> str:
    """Every stdout/stderr log of a job (all tasks), for a failing assertion's message."""
    return "\n".join(f"== {p}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(log_dir.glob(f"*/{job_id}_*log.*")))
