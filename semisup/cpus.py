"""The CPUs a process may use, and the torch threads a training process takes of them.

torch starts one OpenMP thread per core of the machine and lets them spin while they wait. Two
processes on one node (two runs, two tasks of a job, a probe beside a run) then take turns on
spinning threads: two short demo runs at once took 9.4 times as long as one alone on this 2-core
VM (``semisup-bench share``). Two things here prevent that:

- :func:`choose_threads`: a training process takes the CPUs it may use — the smallest of its
  affinity mask (taskset, a scheduler's binding), ``SLURM_CPUS_PER_TASK`` (what the job asked per
  task; Slurm binds it only where the site's task plugin does) and a cgroup CPU quota (containers,
  Slurm's cgroup plugin) — with the mask and the quota shared among the processes of its node, less
  the loader worker processes it starts (one thread each, as PyTorch sets them). ``--threads``, or
  ``OMP_NUM_THREADS`` set by the user or the launcher (torchrun sets 1), wins.
- :func:`wait_passively`: OpenMP threads that have nothing to do sleep instead of spinning
  (``OMP_WAIT_POLICY=PASSIVE``, unless set), so runs that cannot know of each other share the
  cores gracefully. A single run is as fast either way (measured: ``semisup-bench share``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def wait_passively(environ=None) -> None:
    """Idle OpenMP threads sleep rather than spin. Called by the entry points before torch is
    imported (OpenMP reads it when it loads); a value the user set is kept."""
    (os.environ if environ is None else environ).setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str  # where the number came from, in words (the run log and final.json say it)


def affinity_cpus() -> int:
    """The CPUs this process may run on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``), None where there is none or it cannot be read."""
    try:
        lines = proc_self.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2
            quota = _read_words(root / relative / "cpu.max")
            if quota and quota[0] != "max" and len(quota) > 1:
                return _ratio(quota[0], quota[1])
        elif "cpu" in controllers.split(","):  # cgroup v1
            folder = root / controllers / relative
            if not folder.is_dir():
                folder = root / "cpu" / relative
            quota, period = _read_words(folder / "cpu.cfs_quota_us"), _read_words(folder / "cpu.cfs_period_us")
            if quota and period and quota[0] != "-1":
                return _ratio(quota[0], period[0])
    return None


def _read_words(path: Path) -> list[str] | None:
    try:
        return path.read_text().split()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _positive(text: str | None) -> int | None:
    try:
        value = int(str(text).split("(")[0])
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def node_processes(environ=None) -> int:
    """The processes of this run on this node: LOCAL_WORLD_SIZE (torchrun, submitit), Slurm's tasks
    per node, else all of WORLD_SIZE (one node), else 1."""
    env = os.environ if environ is None else environ
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "WORLD_SIZE"):
        value = _positive(env.get(key))
        if value:
            return value
    return 1


def process_cpus(processes: int | None = None, environ=None) -> tuple[int, str]:
    """(the CPUs this process may use, how that was found): see the module docstring."""
    env = os.environ if environ is None else environ
    processes = processes or node_processes(env)
    affinity, quota = affinity_cpus(), cgroup_cpus()
    shared = min(affinity, math.floor(quota) if quota else affinity)
    parts = [f"affinity {affinity}"] + ([f"cgroup quota {quota:g}"] if quota else [])
    per_task = _positive(env.get("SLURM_CPUS_PER_TASK"))
    if per_task:
        cpus = max(1, min(per_task, affinity, max(1, shared // processes) if quota else affinity))
        return cpus, ", ".join(parts + [f"SLURM_CPUS_PER_TASK {per_task}"])
    cpus = max(1, shared // processes)
    return cpus, ", ".join(parts) + (f" / {processes} processes on this node" if processes > 1 else "")


def choose_threads(requested: int | None, loader_workers: int, processes: int | None = None,
                   environ=None) -> ThreadChoice:
    """The torch threads of a training process: ``requested`` (--threads), else OMP_NUM_THREADS,
    else :func:`process_cpus` less its ``loader_workers`` processes (at least one)."""
    env = os.environ if environ is None else environ
    if requested:
        return ThreadChoice(requested, "--threads")
    omp = _positive(env.get("OMP_NUM_THREADS"))
    if omp:
        return ThreadChoice(omp, "OMP_NUM_THREADS")
    cpus, how = process_cpus(processes, env)
    threads = max(1, cpus - loader_workers)
    workers = f", less {loader_workers} loader worker(s)" if loader_workers else ""
    return ThreadChoice(threads, f"{cpus} CPU{'s' if cpus != 1 else ''} ({how}){workers}")
