"""What a job asks of the cluster: its tasks, the CPUs each gets, its time limit, fitted to the
node and the partition it goes to (:mod:`semisup.cluster.partition`)."""
from __future__ import annotations

import math

from semisup import cpus
from semisup.cluster.partition import Partition

LOCAL_TIMEOUT_MIN = 24 * 60  # jobs without GPUs: a day (local jobs are killed by submitit at their limit)


def total_tasks(args) -> int:
    return args.nodes * tasks_per_node(args)


def tasks_per_node(args) -> int:
    return args.tasks_per_node or max(1, args.gpus_per_node)


def cpu_budget(args, slurm: bool, part: Partition | None) -> tuple[int, str]:
    """(the CPUs of a node the job may take, where that number comes from): --cpus-per-node, else
    what the partition's nodes have (the smallest of those with the job's GPUs), else 64 on Slurm
    and locally the CPUs this process may use (its affinity mask, a cgroup quota)."""
    if args.cpus_per_node:
        return args.cpus_per_node, f"--cpus-per-node {args.cpus_per_node}"
    if slurm and part is not None and part.nodes_with(args.gpus_per_node):
        smallest = min(n.cpus for n in part.nodes_with(args.gpus_per_node))
        return smallest, f"the {smallest} CPUs of partition {part.name}'s nodes"
    if slurm:
        return 64, "--cpus-per-node 64 (default; the partition's nodes were not read)"
    cores, how = cpus.process_cpus(processes=1)
    return cores, f"the {cores} CPUs this process may use ({how})"


def fit_cpus(args, run_flags_workers: int | None, default_workers: int, slurm: bool,
             part: Partition | None = None) -> tuple[int, int | None, str]:
    """(cpus per task, --workers to give the job or None to keep its own, a line saying why):
    two loader streams of --workers each plus the training process and a spare, within the
    node's CPU budget (:func:`cpu_budget`)."""
    budget, source = cpu_budget(args, slurm, part)
    per_task = max(1, budget // tasks_per_node(args))
    if args.cpus_per_task:
        return args.cpus_per_task, None, f"cpus per task {args.cpus_per_task} (--cpus-per-task)"
    workers = default_workers if run_flags_workers is None else run_flags_workers
    wanted = 2 * workers + 2
    if wanted <= per_task:
        return (
            wanted,
            None,
            (
                f"cpus per task {wanted} (2 streams x {workers} workers + 2), {wanted * tasks_per_node(args)} of"
                f" {source}"
            ),
        )
    if run_flags_workers is not None:
        return (
            per_task,
            None,
            (
                f"cpus per task {per_task} ({source} / {tasks_per_node(args)} tasks); the run's"
                f" --workers {workers} wants {wanted}: its loaders will share them"
            ),
        )
    fitted = max(0, (per_task - 2) // 2)
    return (
        per_task,
        fitted,
        (
            f"cpus per task {per_task} ({source} / {tasks_per_node(args)} tasks): --workers {fitted}"
            " per stream"
        ),
    )


def default_timeout(args, checked: list[dict], slurm: bool, part: Partition | None = None) -> tuple[int, str]:
    """(minutes, how they were chosen): --timeout-min; on Slurm with GPUs, twice the planner's
    estimate of the longest job of the submission on its GPUs and CPUs (H100 rates) plus 30
    minutes; without GPUs a day; a default never beyond the partition's MaxTime."""
    if args.timeout_min:
        return args.timeout_min, f"time limit {args.timeout_min} min (--timeout-min)"
    minutes, why = _unlimited_default(args, checked, slurm)
    if part is not None and part.max_time_min is not None and minutes > part.max_time_min:
        return part.max_time_min, (
            f"time limit {part.max_time_min} min, partition {part.name}'s MaxTime (the default {minutes} min is "
            "longer; a job that reaches it checkpoints and is requeued)"
        )
    return minutes, why


def _unlimited_default(args, checked: list[dict], slurm: bool) -> tuple[int, str]:
    if not slurm or args.gpus_per_node == 0:
        return (
            LOCAL_TIMEOUT_MIN,
            f"time limit {LOCAL_TIMEOUT_MIN} min (no GPU: the planner's rates do not apply; --timeout-min sets it)",
        )
    from semisup.train import plan
    longest = max(
        plan.plan_run(
            job["settings"], job["summary"], plan.measured_rates("h100"), gpus=total_tasks(args),
            cores=args.nodes * args.cpus_per_task * tasks_per_node(args),
        )["total_s"]
        for job in checked
    )
    minutes = math.ceil(2 * longest / 60 + 30)
    return (
        minutes,
        (
            f"time limit {minutes} min = 2 x the planner's {longest / 60:.1f} min for {total_tasks(args)} GPU(s) at"
            " H100 rates + 30 min (semisup-bench plan; --timeout-min sets it)"
        ),
    )
