"""Cluster submission with submitit: the job runs the same entry point as semisup/run.py.

Used by ``jobs/submit.py``. One task per GPU; torch.distributed is set up from submitit's
environment (``TorchDistributedEnvironment``), never by nesting torchrun. The job object is
checkpointable: on preemption or timeout submitit calls ``checkpoint()``, which resubmits the
same command; the run resumes from its last atomic checkpoint in the same run directory.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from semisup.errors import UsageError

REPO = Path(__file__).resolve().parents[1]


class TrainJob:
    """A submitit job: ``TrainJob(run_py_flags)()`` trains one run (all tasks of it)."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)

    def __call__(self) -> dict:
        import submitit

        from semisup.config import parse_config
        from semisup.train import train

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # Exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for env:// init;
            # semisup.distributed.setup then calls torch.cuda.set_device(LOCAL_RANK) first thing.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return train(parse_config(self.argv))

    def checkpoint(self, *args, **kwargs):
        """Preempted or timed out: resubmit the same command. The weights are not pickled here:
        the training loop's own checkpoint.pt (every --checkpoint-every steps and each epoch)
        is what the requeued job resumes from."""
        import submitit
        return submitit.helpers.DelayedSubmission(TrainJob(self.argv))


def run_dir_of(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--run-dir" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--run-dir="):
            return arg.split("=", 1)[1]
    return None


def with_run_dir(argv: list[str], default: Path) -> list[str]:
    """Every job gets an explicit absolute run directory, so a requeued job resumes in it."""
    given = run_dir_of(argv)
    if given is None:
        return argv + ["--run-dir", str(default.resolve())]
    return [str(Path(a).resolve()) if a == given else a for a in argv]


def check_before_queueing(argv: list[str], tasks: int = 1) -> None:
    """Refuse, before anything is queued, a job that would fail at once: invalid flags, batch
    sizes not divisible by the job's ``tasks``, a path it names that does not exist (as seen
    from here), or a finished run directory."""
    from semisup.config import parse_config, validate
    cfg = validate(parse_config(argv), world=tasks)  # raises ConfigError naming the setting
    for flag, value in (("--data", cfg.data), ("--pretrained", cfg.pretrained), ("--val-boxes", cfg.val_boxes),
                        ("--split-file", cfg.split_file), ("--val-labels", cfg.val_labels)):
        if value is not None and not Path(value).exists():
            raise UsageError(f"{flag} {value}: no such file or folder as seen from this machine; nothing was queued")
    run_dir = Path(run_dir_of(argv))
    if (run_dir / "final.json").exists() and "--overwrite" not in argv:
        raise UsageError(f"{run_dir} already holds a finished run; pass --overwrite after -- or choose another --run-dir")


@contextlib.contextmanager
def code_snapshot(dest: Path):
    """Submit from a snapshot of the tracked files (``semisup.snapshot``), so jobs queued for a
    week run the code as it was at submission, whatever happens to the checkout meanwhile."""
    from semisup.snapshot import take_snapshot
    info = take_snapshot(dest)
    dirty = " with uncommitted edits to tracked files (recorded as dirty)" if info["dirty"] else ""
    print(f"code snapshot {dest}: commit {info['commit'][:12]}{dirty}, {info['files']} files, {info['bytes'] / 1e6:.1f} MB")
    if info["untracked"]:
        print(f"not in the snapshot (untracked; `git add` them to include): {', '.join(info['untracked'][:8])}"
              + (" ..." if len(info["untracked"]) > 8 else ""))
    previous_cwd, previous_path = Path.cwd(), list(sys.path)
    os.chdir(dest)
    sys.path.insert(0, str(dest))
    try:
        yield dest
    finally:
        os.chdir(previous_cwd)
        sys.path[:] = previous_path


def make_executor(args, folder: Path):
    import submitit

    cluster = None if args.cluster == "auto" else args.cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    tasks = args.tasks_per_node or max(1, args.gpus_per_node)
    params = dict(nodes=args.nodes, tasks_per_node=tasks, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                  timeout_min=args.timeout_min, name=args.name)
    params = {k: v for k, v in params.items() if v is not None}
    slurm = dict(slurm_partition=args.partition, slurm_account=args.account, slurm_qos=args.qos, slurm_constraint=args.constraint,
                 slurm_mem=args.mem, slurm_comment=args.comment, slurm_signal_delay_s=args.signal_delay_s,
                 slurm_additional_parameters=dict(kv.split("=", 1) for kv in args.sbatch) or None)
    params.update({k: v for k, v in slurm.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def sweep_commands(path: Path, run_root: Path) -> list[tuple[str, list[str]]]:
    """(name, run.py flags) for each point of a sweep file's grid.

    Format: ``base: [flags...]`` and ``grid: {flag: [values...]}`` (flag names without dashes)."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"--sweep {path}: {str(err).splitlines()[0]}") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("grid"), dict) or not all(isinstance(v, list) for v in spec["grid"].values()):
        raise UsageError(f"{path}: a sweep needs 'grid: {{flag: [values]}}' (and optionally 'base: [flags]' and 'name')")
    base = [str(x) for x in spec.get("base", [])]
    keys = list(spec["grid"])
    commands = []
    for values in itertools.product(*(spec["grid"][k] for k in keys)):
        name = "_".join(f"{k.replace('_', '-')}{v}" for k, v in zip(keys, values))
        flags = base + [x for k, v in zip(keys, values) for x in (f"--{k.replace('_', '-')}", str(v))]
        commands.append((name, with_run_dir(flags, run_root / spec.get("name", path.stem) / name)))
    return commands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Submit semisup/run.py as a submitit job (Slurm, local or in-process debug).",
                                usage="python jobs/submit.py [options] -- <run.py flags>")
    p.add_argument("--cluster", default="auto", choices=["auto", "slurm", "local", "debug"],
                   help="auto: Slurm when sbatch is present, else local; debug runs in this process (pdb works)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--tasks-per-node", type=int, help="default: one per GPU (1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, help="default: two loader streams x --workers of the run, + 2 (the training process and a spare)")
    p.add_argument("--timeout-min", type=int, default=4320)
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--mem", help="memory per node, e.g. 480G")
    p.add_argument("--comment")
    p.add_argument("--signal-delay-s", type=int, default=120, help="seconds between Slurm's USR2 and the kill (time to requeue)")
    p.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch option, repeatable")
    p.add_argument("--name", help="job and run-folder name (default: run.py's own, e.g. imagenet-cgc-frac0.01-seed0)")
    p.add_argument("--log-dir", type=Path, default=Path("jobs/logs"), help="submitit logs and code snapshots")
    p.add_argument("--run-root", type=Path, default=Path("runs"), help="parent of run directories not given by --run-dir")
    p.add_argument("--sweep", type=Path, help="YAML grid: one job per point, submitted as an array")
    p.add_argument("--no-snapshot", action="store_true", help="run the live checkout instead of a snapshot")
    p.add_argument("--dry-run", action="store_true",
                   help="print the sbatch script and run run.py's --dry-run checks for every job; queue nothing")
    return p


def total_tasks(args) -> int:
    return args.nodes * (args.tasks_per_node or max(1, args.gpus_per_node))


def record_job(run_dir: Path, job, cluster: str, name: str, **outcome) -> None:
    """Append the job to ``run_dir/job.json`` (every submission of this run, newest last), where
    ``jobs/status.py`` finds its id, scheduler and logs even if the job never started."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "job.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    paths = job.paths
    history.append(dict(job_id=str(job.job_id), cluster=cluster, name=name, folder=str(paths.folder), stdout=str(paths.stdout),
                        stderr=str(paths.stderr), submitted=time.strftime("%Y-%m-%d %H:%M:%S"), **outcome))
    tmp = path.with_name(".job.json.tmp")
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def _slurm_preview():
    """Let submitit write an sbatch script on a machine without ``srun`` (a preview only)."""
    from unittest import mock

    import submitit.slurm.slurm as slurm
    with mock.patch.object(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1)):
        yield


def preview(args, commands: list[tuple[str, list[str]]], log_dir: Path) -> None:
    """--dry-run: the exact sbatch script, then run.py's own --dry-run for every job (data,
    splits, boxes, pretrained weights, model), on the CPU here; nothing is queued."""
    from semisup.config import parse_config
    from semisup.train import train

    slurm = args.cluster == "slurm" or (args.cluster == "auto" and shutil.which("sbatch"))
    if slurm:
        with _slurm_preview():
            args.cluster = "slurm"
            executor = make_executor(args, log_dir / "%j")._executor
        print(f"# sbatch script of {'each job' if len(commands) == 1 else f'the array of {len(commands)} jobs (one per grid point)'}")
        print(executor._make_submission_file_text(executor._submitit_command_str, "<uid>").rstrip())
        print(f"# requeue: Slurm sends USR2 {args.signal_delay_s} s before the time limit or at preemption; the run writes "
              "checkpoint.pt at the next step, submitit runs `scontrol requeue`, and the requeued job resumes in the same "
              "run directory (up to 3 timeouts; preemptions requeue without limit).")
    else:
        print(f"# {args.cluster if args.cluster != 'auto' else 'local (no sbatch here)'}: {total_tasks(args)} task(s) on this "
              f"machine, logs under {log_dir}")
    for name, flags in commands:
        print(f"\n== {name}: run dir {run_dir_of(flags)}")
        train(parse_config(flags + ["--dry-run", "--device", "cpu"]))
    print(f"\ndry run: {len(commands)} job(s) checked, nothing queued")


def main(argv: list[str] | None = None) -> list:
    argv = sys.argv[1:] if argv is None else list(argv)
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    log_dir = args.log_dir.resolve()
    if args.sweep:
        commands = [(name, flags + run_flags) for name, flags in sweep_commands(args.sweep.resolve(), args.run_root.resolve())]
    else:
        from semisup.config import parse_config
        from semisup.rundir import default_run_dir
        # The same name run.py gives the run (validating its flags now, before queueing), so two
        # submissions never share a folder and a resubmitted job finds its own.
        name = args.name or default_run_dir(parse_config(run_flags)).name
        commands = [(name, with_run_dir(run_flags, args.run_root.resolve() / name))]
    for _, flags in commands:
        check_before_queueing(flags, total_tasks(args))
    if args.cpus_per_task is None:
        from semisup.config import parse_config
        args.cpus_per_task = 2 * parse_config(commands[0][1]).workers + 2  # two streams' workers + the training process
    args.name = args.name or commands[0][0]
    if args.dry_run:
        preview(args, commands, log_dir)
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    snapshot = contextlib.nullcontext() if args.no_snapshot or args.cluster == "debug" else code_snapshot(log_dir / "code" / stamp)
    with snapshot:
        executor = make_executor(args, log_dir / "%j")
        if len(commands) == 1:
            jobs = [executor.submit(TrainJob(commands[0][1]))]
        else:
            with executor.batch():
                jobs = [executor.submit(TrainJob(flags)) for _, flags in commands]
    for (name, flags), job in zip(commands, jobs):
        if executor.cluster != "debug":
            record_job(Path(run_dir_of(flags)), job, executor.cluster, name)
        print(f"submitted {name}: job {job.job_id}, logs {job.paths.folder}, run dir {run_dir_of(flags)}")
    if executor.cluster == "debug":  # submitit's DebugExecutor runs a job when its result is asked for: here, in this process
        for (name, flags), job in zip(commands, jobs):
            try:
                result = job.result()
            except Exception as err:
                record_job(Path(run_dir_of(flags)), job, "debug", name, state="FAILED", error=f"{type(err).__name__}: {err}")
                raise
            record_job(Path(run_dir_of(flags)), job, "debug", name, state="COMPLETED")
            print(f"finished {name} in-process: {result.get('steps')} steps, final top-1 {result['final'].get('top1', float('nan')):.2f}")
    return jobs
