"""A Slurm partition's limits, read before queueing, so that a job that can never start is refused
in one line instead of pending forever (``PartitionConfig``, ``PartitionTimeLimit``, ``Resources``).

    from semisup.cluster.partition import read_partitions
    limits = read_partitions()["main"]        # None where scontrol does not answer

From ``scontrol show partition -o`` (MaxTime, MaxNodes, its nodes, the default partition) and
``scontrol show node -o`` (each node's CPUs, GPUs from its GRES, memory, partitions).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from semisup import scheduler
from semisup.errors import UsageError


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    gpus: int
    memory_mb: int | None


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    max_time_min: int | None  # None: UNLIMITED
    max_nodes: int | None  # None: UNLIMITED
    state: str
    nodes: list[Node] = field(default_factory=list)

    def nodes_with(self, gpus: int) -> list[Node]:
        """The nodes with at least ``gpus`` GPUs."""
        return [n for n in self.nodes if n.gpus >= gpus]


def slurm_minutes(text: str) -> int | None:
    """Slurm's time format in minutes, rounded up: ``days-hours:minutes:seconds``, ``hours:minutes:seconds``,
    ``minutes:seconds``, ``minutes``; None for UNLIMITED, INFINITE or NONE."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 3:
        hours, minutes, seconds = parts
    elif len(parts) == 2:
        hours, minutes, seconds = (0, *parts) if not days else (parts[0], parts[1], 0)
    else:
        hours, minutes, seconds = (parts[0], 0, 0) if days else (0, parts[0], 0)
    total_s = ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
    return -(-total_s // 60)


def gpu_count(gres: str) -> int:
    """GPUs in a node's GRES: ``gpu:8``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:4,gpu:v100:2``; 0 for (null)."""
    total = 0
    for item in re.sub(r"\(.*?\)", "", gres).split(","):  # socket lists in (...) hold commas too
        parts = item.split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
    return total


def _records(text: str) -> list[dict[str, str]]:
    return [scheduler.fields(line) for line in text.splitlines() if line.strip()]


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def read_partitions() -> dict[str, Partition] | None:
    """Every partition by name, None where scontrol does not answer (no Slurm here, or its
    controller is down)."""
    partitions_text = scheduler.slurm_output(["scontrol", "-a", "show", "partition", "-o"])  # hidden ones too
    nodes_text = scheduler.slurm_output(["scontrol", "-a", "show", "node", "-o"])
    if partitions_text is None or nodes_text is None:
        return None
    nodes = {}
    for rec in _records(nodes_text):
        # CPUEfctv: the CPUs a job can have (CPUTot less those a CoreSpecCount/CpuSpecList keeps for the system).
        cpus = _number(rec.get("CPUEfctv")) or _number(rec.get("CPUTot")) or 0
        node = Node(rec.get("NodeName", "?"), cpus, gpu_count(rec.get("Gres", "")), _number(rec.get("RealMemory")))
        for name in rec.get("Partitions", "").split(","):
            nodes.setdefault(name, []).append(node)
    return {
        rec["PartitionName"]: Partition(
            rec["PartitionName"], rec.get("Default") == "YES", slurm_minutes(rec.get("MaxTime", "UNLIMITED")),
            _number(rec.get("MaxNodes")), rec.get("State", "UP"), nodes.get(rec["PartitionName"], []),
        )
        for rec in _records(partitions_text)
        if "PartitionName" in rec
    }


def choose(partitions: dict[str, Partition], name: str | None, flag: str = "--partition") -> Partition:
    """The partition a job goes to: ``name`` (given as ``flag``), or the cluster's default; one
    line naming the choices otherwise. A partition with several names (``a,b``: sbatch takes the
    first that can start the job) is not checked here: None."""
    names = ", ".join(sorted(partitions)) or "none"
    if name is None:
        default = next((p for p in partitions.values() if p.default), None)
        if default is None:
            raise UsageError(f"no --partition given and this cluster has no default partition (partitions: {names})")
        return default
    if name not in partitions:
        raise UsageError(f"{flag} {name}: no such partition on this cluster (partitions: {names})")
    if not partitions[name].nodes:
        raise UsageError(f"{flag} {name}: the partition has no nodes; choose another (partitions: {names})")
    return partitions[name]


def check_fits(part: Partition, nodes: int, tasks_per_node: int, gpus_per_node: int, cpus_per_task: int,
               timeout_min: int, time_flag: str) -> None:
    """Refuse, in one line naming the limit, a job that partition ``part`` can never start."""
    fitting = part.nodes_with(gpus_per_node)  # (a partition with no nodes was refused by choose)
    if gpus_per_node and not fitting:
        most = max((n.gpus for n in part.nodes), default=0)
        raise UsageError(
            f"--gpus-per-node {gpus_per_node}: no node of partition {part.name} has {gpus_per_node} GPU(s) (most: "
            f"{most}{', no gres/gpu configured' if most == 0 else ''}); choose a GPU partition or fewer GPUs"
        )
    cpus = cpus_per_task * tasks_per_node
    fitting = [n for n in fitting if n.cpus >= cpus]
    if not fitting:
        most = max((n.cpus for n in part.nodes_with(gpus_per_node)), default=0)
        raise UsageError(
            f"{cpus_per_task} CPUs per task x {tasks_per_node} task(s) per node = {cpus} CPUs: the nodes of partition "
            f"{part.name} have at most {most}; pass --cpus-per-node {most} "
            f"(or --cpus-per-task {max(1, most // tasks_per_node)})"
        )
    limit = min(len(fitting), part.max_nodes or len(fitting))
    if nodes > limit:
        raise UsageError(
            f"--nodes {nodes}: partition {part.name} has {limit} node(s) that fit this job "
            f"({gpus_per_node} GPU(s) and {cpus} CPUs each); ask for at most {limit}"
        )
    if part.max_time_min is not None and timeout_min > part.max_time_min:
        raise UsageError(
            f"{time_flag} {timeout_min} min exceeds partition {part.name}'s MaxTime of {part.max_time_min} min; "
            f"pass --timeout-min {part.max_time_min} or less (a job that reaches it checkpoints and is requeued)"
        )
