"""The environment a launcher sets, read as settings: validated once, each variable named in the
line that refuses it.

torchrun and submitit export ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; Slurm sets ``SLURM_*``. They outlive their launcher in a shell
(an ``export`` left from an interactive job, a ``.bashrc``), and a stale one changes what a run
does: ``RANK=1`` without ``WORLD_SIZE`` ran a rank that writes nothing and exited 0; ``WORLD_SIZE=2``
with a master address waited 30 minutes for a peer that never came. :data:`VARIABLES` holds every
variable the project reads with its rule (the generated tests read it); :func:`read` checks them
all and their combinations, and raises :class:`LaunchEnvError` naming the variable and the fix.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from semisup.errors import UsageError

RENDEZVOUS_TIMEOUT_S = 600  # how long the processes of a run wait for each other at the start


class LaunchEnvError(UsageError, ValueError):
    """An environment variable a launcher sets has a value no run can use."""


@dataclass(frozen=True)
class Variable:
    kind: str  # "int", "port", "host", "job", "tasks"
    low: int | None  # smallest value of an int
    meaning: str


VARIABLES = {
    "WORLD_SIZE": Variable("int", 1, "the processes of the run (torchrun, submitit)"),
    "RANK": Variable("int", 0, "this process's rank, below WORLD_SIZE"),
    "LOCAL_RANK": Variable("int", 0, "this process's rank on its node (its GPU)"),
    "LOCAL_WORLD_SIZE": Variable("int", 1, "the run's processes on this node"),
    "MASTER_ADDR": Variable("host", None, "the host of rank 0, where the processes meet"),
    "MASTER_PORT": Variable("port", None, "the port on MASTER_ADDR where the processes meet"),
    "SLURM_JOB_ID": Variable("job", None, "the Slurm job this process runs in"),
    "SLURM_ARRAY_JOB_ID": Variable("job", None, "the Slurm array this job belongs to"),
    "SLURM_ARRAY_TASK_ID": Variable("int", 0, "this job's index in its Slurm array"),
    "SLURM_RESTART_COUNT": Variable("int", 0, "how often Slurm requeued this job"),
    "SLURM_CPUS_PER_TASK": Variable("int", 1, "the CPUs the job asked for each task"),
    "SLURM_NTASKS_PER_NODE": Variable("int", 1, "the job's tasks on each node"),
    "SLURM_TASKS_PER_NODE": Variable("tasks", None, "the job's tasks on each node, as '2(x3),1'"),
    "SEMISUP_RENDEZVOUS_TIMEOUT_S": Variable("int", 1, "seconds the processes of a run wait for each other"),
}
_PATTERNS = {
    "host": re.compile(r"^[A-Za-z0-9_.:\[\]-]+$"),
    "job": re.compile(r"^[0-9]+$"),
    "tasks": re.compile(r"^[0-9]+(\(x[0-9]+\))?(,[0-9]+(\(x[0-9]+\))?)*$"),
}


@dataclass(frozen=True)
class LaunchEnv:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int | None = None
    master_addr: str | None = None
    master_port: int | None = None
    rendezvous_timeout_s: int = RENDEZVOUS_TIMEOUT_S


def _value(name: str, text: str) -> int | str:
    var = VARIABLES[name]
    shown = f"{name}={text!r}"
    if var.kind in ("int", "port"):
        try:
            value = int(text.strip())
        except ValueError:
            raise LaunchEnvError(f"{shown}: expected a whole number ({var.meaning}); {_STALE}") from None
        if var.kind == "port" and not 1 <= value <= 65535:
            raise LaunchEnvError(f"{shown}: expected a port, 1 to 65535 ({var.meaning}); {_STALE}")
        if var.low is not None and value < var.low:
            raise LaunchEnvError(f"{shown}: must be >= {var.low} ({var.meaning}); {_STALE}")
        return value
    if not _PATTERNS[var.kind].match(text):
        raise LaunchEnvError(f"{shown}: not a valid value ({var.meaning}); {_STALE}")
    return text


_STALE = "a launcher's leftover in this shell? unset it, or start the run through torchrun, submitit or srun"


def check_all(environ=None) -> dict[str, int | str]:
    """Every variable of :data:`VARIABLES` that is set, parsed; the first bad one raises."""
    env = os.environ if environ is None else environ
    return {name: _value(name, env[name]) for name in VARIABLES if name in env}


def read(environ=None) -> LaunchEnv:
    """The run's processes as the launcher described them, every variable and combination checked."""
    values = check_all(environ)
    world = values.get("WORLD_SIZE", 1)
    if "RANK" in values and "WORLD_SIZE" not in values and values["RANK"] != 0:
        raise LaunchEnvError(f"RANK={values['RANK']} is set but WORLD_SIZE is not: this process would train as a "
                             f"rank of a run that has no others and write nothing; {_STALE}")
    if world > 1:
        missing = [n for n in ("RANK", "MASTER_ADDR", "MASTER_PORT") if n not in values]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise LaunchEnvError(f"WORLD_SIZE={world} is set but {', '.join(missing)} {verb} not: a run of {world} "
                                 f"processes needs all of them; {_STALE}")
    rank = values.get("RANK", 0)
    if rank >= world:
        raise LaunchEnvError(f"RANK={rank} is not below WORLD_SIZE={world}; {_STALE}")
    local_world = values.get("LOCAL_WORLD_SIZE")
    local_rank = values.get("LOCAL_RANK", 0)
    if local_world is not None and (local_world > world or local_rank >= local_world):
        raise LaunchEnvError(f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world} and WORLD_SIZE={world} do not "
                             f"fit together (LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE); {_STALE}")
    if local_rank >= world:
        raise LaunchEnvError(f"LOCAL_RANK={local_rank} is not below WORLD_SIZE={world}; {_STALE}")
    return LaunchEnv(world, rank, local_rank, local_world, values.get("MASTER_ADDR"), values.get("MASTER_PORT"),
                     values.get("SEMISUP_RENDEZVOUS_TIMEOUT_S", RENDEZVOUS_TIMEOUT_S))
