"""Cluster submission with submitit: the job runs the same entry point as semisup/run.py.

Used by ``jobs/submit.py``. One task per GPU; torch.distributed is set up from submitit's
environment (``TorchDistributedEnvironment``), never by nesting torchrun. The job object is
checkpointable: on preemption or timeout submitit calls ``checkpoint()``, which resubmits the
same command; the run resumes from its last atomic checkpoint in the same run directory.

A job runs elsewhere than the command that queued it: in a snapshot of the code, from the
snapshot's folder, perhaps on another node a week later. So every path a job reads is made
absolute against the folder the user submitted from (``pin_paths``: flags, sweep values,
recipes and the default ``splits/`` and ``pretrained/`` folders of the submitting checkout), and
the checks before queueing (``semisup.cluster.preflight``) run with the job's own code and working
directory: a check that passes means the job starts.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from semisup.cluster.job import TrainJob, run_dir_of, with_run_dir
from semisup.cluster.partition import Partition, check_fits, choose, read_partitions
from semisup.cluster.resources import default_timeout, fit_cpus, tasks_per_node, total_tasks
from semisup.cluster.sbatch import make_executor, sbatch_script, submit
from semisup.config import PROJECT_ROOT, yaml_problem
from semisup.errors import Parser, UsageError, UserError, cli
from semisup.files import read_json, write_json_atomic
from semisup.runfiles import RunFiles

REPO = PROJECT_ROOT


def _without(argv: list[str], spellings: tuple[str, ...]) -> list[str]:
    """``argv`` less every occurrence of the one-value flags in ``spellings``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in spellings:
            skip = True
        elif not arg.startswith(tuple(f"{s}=" for s in spellings)):
            out.append(arg)
    return out


def _absolute(value: str, base: Path) -> str:
    """``value`` as an absolute path seen from ``base`` (symlinks kept: a user's /datasets link stays)."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def pin_paths(argv: list[str], base: Path) -> tuple[list[str], dict]:
    """The job's flags with every path it reads absolute as seen from ``base`` (where the user
    submitted from), and what it reads: {setting: absolute path}.

    Paths given by flag, by ``--config`` file or by a recipe, and the submitting checkout's
    default ``splits/`` folder, become explicit ``--flag /absolute/path`` arguments: in the
    snapshot (a copy of the tracked files only, without the downloaded split files and weights)
    the job then reads exactly the files the submitting checkout sees."""
    from semisup.config import flag_spellings, parse_config, path_fields
    from semisup.data.splits import SPLITS_DIR

    config_flags = ("--config",)
    pinned = list(argv)
    for i, arg in enumerate(pinned):
        if arg in config_flags and i + 1 < len(pinned):
            pinned[i + 1] = _absolute(pinned[i + 1], base)
        elif arg.startswith("--config="):
            pinned[i] = "--config=" + _absolute(arg.split("=", 1)[1], base)
    cfg = parse_config(pinned)
    reads = {}
    for key in path_fields():
        value = getattr(cfg, key)
        reads_splits = not (cfg.is_demo or cfg.split_file or cfg.full_supervision or cfg.data_format != "imagefolder")
        if key == "splits_dir" and value is None and reads_splits:
            value = str(SPLITS_DIR)  # the submitting checkout's splits/, where `semisup-splits download` puts them
        if value is None:
            continue
        reads[key] = _absolute(value, base)
        pinned = _without(pinned, flag_spellings(key)) + [flag_spellings(key)[0], reads[key]]
    return pinned, reads


# ---- names and values that reach the sbatch script ------------------------------------------------
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,127}$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f'\"`$\\;]")


def check_name(name: str, what: str) -> str:
    """Job and run-folder names: letters, digits and ``. _ + = -`` only (they become a Slurm job
    name, a folder and part of the sbatch script)."""
    if not _NAME.match(name):
        raise UsageError(
            f"{what} {name!r}: use letters, digits and . _ + = - only (at most 128 characters); nothing was written"
        )
    return name


def check_sbatch_value(value, what: str) -> None:
    """A value that goes into the sbatch script: no newline or other control character, quote,
    backslash, ``$``, backtick or ``;`` (a newline would start a new shell line in the script)."""
    if value is not None and _UNSAFE.search(str(value)):
        raise UsageError(
            f"{what} {str(value)!r}: newlines, quotes, backslashes, $, ` and ; are not allowed in values that reach "
            "the sbatch script; nothing was written"
        )


def _value_name(value) -> str:
    """How a sweep value appears in a run-folder name: a path by its file name without extensions,
    a list by its items joined with '-', None (the setting's default) as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return "-".join(map(_value_name, value))
    text = str(value)
    if "/" in text:
        text = Path(text).name.split(".")[0]
    return text


def sweep_commands(path: Path, run_root: Path) -> tuple[str, list[tuple[str, list[str]]]]:
    """(sweep name, [(name, run.py flags) for each point of the grid]).

    Format: ``name``, ``base: [flags...]`` and ``grid: {setting: [values...]}``; grid keys are the
    settings' names as in flags and YAML (``lambda``, ``seed``, ``cgc_weight``, ``--lr-head``)."""
    from semisup.config import CONFIG_FILE_LIMIT, StrictLoader, canonical_key, flag_spellings
    from semisup.files import read_text
    try:
        # A sweep file is a config file: bounded, no duplicate keys, no aliases (semisup.config.StrictLoader).
        spec = yaml.load(read_text(path, CONFIG_FILE_LIMIT, UsageError), Loader=StrictLoader)
    except FileNotFoundError:
        raise UsageError(f"--sweep {path}: no such file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        problem = "nested too deeply" if isinstance(err, RecursionError) else yaml_problem(err)
        raise UsageError(f"--sweep {path}: {problem}") from err
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("grid"), dict)
        or not spec["grid"]
        or not all(isinstance(v, list) and v for v in spec["grid"].values())
        or not isinstance(spec.get("base", []), list)
    ):
        raise UsageError(
            f"{path}: a sweep needs 'grid: {{setting: [values]}}' (and optionally 'base: [flags]' and 'name')"
        )
    sweep_name = check_name(str(spec.get("name", path.stem)), f"{path}: sweep name")
    base = [str(x) for x in spec.get("base", [])]
    if run_dir_of(base) is not None:
        raise UsageError(
            f"{path}: --run-dir in 'base' would put every grid point in one folder; each point gets its own under "
            "--run-root (remove --run-dir from base)"
        )
    keys = list(spec["grid"])
    for key in keys:
        if canonical_key(str(key)) is None:
            raise UsageError(f"{path}: grid key {key!r} is not a setting (see python semisup/run.py --help)")
    commands = []
    for values in itertools.product(*(spec["grid"][k] for k in keys)):
        name = "_".join(f"{str(k).lstrip('-').replace('_', '-')}{_value_name(v)}" for k, v in zip(keys, values))
        check_name(name, f"{path}: the run name of grid point")
        flags = list(base)
        for key, value in zip(keys, values):
            flag = flag_spellings(canonical_key(str(key)))[0]
            if value is None:  # null in the grid: the setting's default, no flag
                continue
            if isinstance(value, bool):
                flags.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list):
                flags += [flag, *map(str, value)]
            else:
                flags += [flag, str(value)]
        commands.append((name, with_run_dir(flags, run_root / sweep_name / name)))
    names = [name for name, _ in commands]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(
            f"{path}: several grid points would share the run folder {twice[0]!r} (values that differ only in a path's "
            "folder or extension); give those files distinct names"
        )
    return sweep_name, commands


# ---- submission -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = Parser(description="Submit semisup/run.py as a submitit job (Slurm, local or in-process debug).",
                                usage="python jobs/submit.py [options] -- <run.py flags>")
    _where_options(p.add_argument_group("where the job runs"))
    _slurm_options(p.add_argument_group("Slurm"))
    _what_options(p.add_argument_group("what is submitted"))
    return p


def _where_options(where) -> None:
    where.add_argument(
        "--cluster",
        default="auto",
        choices=["auto", "slurm", "local", "debug"],
        help=(
            "auto: Slurm when sbatch is here or Slurm options (--partition, --gpus-per-node, --nodes > 1, ...) are "
            "given, else local; debug runs in this process (pdb works)"
        ),
    )
    where.add_argument("--nodes", type=int, default=1, help="nodes of the job (more than 1: Slurm)")
    where.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node, one task each (0: a CPU job)")
    where.add_argument("--tasks-per-node", type=int, help="default: one per GPU (1 without GPUs)")
    where.add_argument("--cpus-per-node", type=int,
                       help="the node's CPUs the job may take (default: 64 on Slurm, this machine's cores locally); "
                            "--cpus-per-task and the run's --workers are fitted inside it")
    where.add_argument("--cpus-per-task", type=int,
                       help="default: two loader streams x --workers of the run + 2, within --cpus-per-node (the run's "
                            "--workers is lowered to fit unless given)")
    where.add_argument(
        "--timeout-min",
        type=int,
        help=(
            "time limit (default on Slurm: twice the planner's estimate for this run on this many GPUs, with "
            "H100 rates, + 30 min; a job that reaches it checkpoints and is requeued)"
        ),
    )


def _slurm_options(sbatch) -> None:
    sbatch.add_argument("--partition", help="Slurm partition (sbatch --partition)")
    sbatch.add_argument("--account", help="account to charge (sbatch --account)")
    sbatch.add_argument("--qos", help="quality of service (sbatch --qos)")
    sbatch.add_argument("--constraint", help="node features, e.g. a100 (sbatch --constraint)")
    sbatch.add_argument("--mem", help="memory per node, e.g. 480G")
    sbatch.add_argument("--comment")
    sbatch.add_argument(
        "--wckey",
        help=(
            "Slurm workload characterisation key (default: none; submitit's default 'submitit' is "
            "refused by clusters that enforce wckeys)"
        ),
    )
    sbatch.add_argument(
        "--signal-delay-s", type=int, default=120, help="seconds between Slurm's USR2 and the kill (time to requeue)"
    )
    sbatch.add_argument(
        "--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch option, repeatable"
    )


def _what_options(what) -> None:
    what.add_argument(
        "--name", help="job and run-folder name (default: run.py's own, e.g. imagenet-cgc-frac0.01-seed0)"
    )
    what.add_argument("--log-dir", type=Path, default=Path("jobs/logs"), help="submitit logs and code snapshots")
    what.add_argument(
        "--run-root", type=Path, default=Path("runs"), help="parent of run directories not given by --run-dir"
    )
    what.add_argument("--sweep", type=Path, help="YAML grid: one job per point, submitted as an array")
    what.add_argument("--no-snapshot", action="store_true", help="run the live checkout instead of a snapshot")
    what.add_argument(
        "--overwrite",
        action="store_true",
        help=(
            "give every job run.py's --overwrite: a finished run in its folder is "
            "replaced (its files moved to replaced-<time>/, not deleted)"
        ),
    )
    what.add_argument(
        "--dry-run",
        action="store_true",
        help=(
            "print the sbatch script and run run.py's --dry-run checks for every job, in a snapshot as the job "
            "would; queue nothing, create nothing"
        ),
    )


SLURM_ONLY = ("partition", "account", "qos", "constraint", "mem", "comment", "wckey")


def slurm_meant(args) -> bool:
    """Whether the user asked for Slurm: --cluster slurm, or auto with sbatch here or with options
    only Slurm has (a partition, GPUs, several nodes, sbatch extras)."""
    if args.cluster in ("local", "debug"):
        return False
    return (
        args.cluster == "slurm"
        or bool(shutil.which("sbatch"))
        or args.nodes > 1
        or args.gpus_per_node > 0
        or bool(args.sbatch)
        or any(getattr(args, k) is not None for k in SLURM_ONLY)
    )


def check_args(args) -> None:
    """Refuse numbers that cannot make a job and values that would break the sbatch script."""
    for key in ("nodes", "tasks_per_node", "cpus_per_node", "cpus_per_task", "timeout_min", "signal_delay_s"):
        value = getattr(args, key)
        if value is not None and value < 1:
            raise UsageError(f"--{key.replace('_', '-')}: must be >= 1, got {value}")
    if args.gpus_per_node < 0:
        raise UsageError(f"--gpus-per-node: must be >= 0, got {args.gpus_per_node}")
    if args.name is not None:
        check_name(args.name, "--name")
    for key in SLURM_ONLY:
        check_sbatch_value(getattr(args, key), f"--{key}")
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[a-z][a-z0-9-]*$", key):
            raise UsageError(
                f"--sbatch {item!r}: expected KEY=VALUE with an sbatch option name as KEY (e.g. reservation=cgc)"
            )
        check_sbatch_value(value, f"--sbatch {key}")
    for key in ("log_dir", "run_root"):
        check_sbatch_value(str(getattr(args, key)), f"--{key.replace('_', '-')}")


def record_job(run_dir: Path, job, cluster: str, name: str, **details) -> None:
    """Append the job to ``run_dir/job.json`` (every submission of this run, newest last), where
    ``jobs/status.py`` finds its id, scheduler, logs and the files it reads, even if it never started."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunFiles(run_dir).jobs
    try:
        history = read_json(path, list) if path.is_file() else []
    except UserError:
        history = []  # a damaged record is replaced by this submission's, never a reason to refuse it
    paths = job.paths
    if cluster == "local":  # its id is a pid: which process it is, so status never takes another for it
        from semisup.train.runlock import boot_id, process_start
        details = dict(details, boot=boot_id(), process_start=process_start(int(job.job_id)))
    history.append(
        dict(
            job_id=str(job.job_id), cluster=cluster, name=name, folder=str(paths.folder), stdout=str(paths.stdout),
            stderr=str(paths.stderr), submitted=time.strftime("%Y-%m-%d %H:%M:%S"), **details,
        )
    )
    write_json_atomic(path, history)


def preflight(
    commands: list[tuple[str, list[str]]], tasks: int, code: Path, cwd: Path, decode_check: bool
) -> tuple[list[dict], str]:
    """Run the checks of ``semisup.cluster.preflight`` for every job with the job's own code (``code`` on
    the import path) from the job's working directory (``cwd``); returns each job's
    {name, summary, settings} and what the checks printed. A failing check raises its one line,
    naming the job."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "checked.json"
        request = dict(
            jobs=[dict(name=n, argv=f) for n, f in commands], tasks=tasks, decode_check=decode_check, out=str(out)
        )
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(code), os.environ.get("PYTHONPATH", "")) if p)
        )
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            env.pop(key, None)
        proc = subprocess.run(
            [sys.executable, "-m", "semisup.cluster.preflight"], cwd=cwd, env=env, input=json.dumps(request),
            capture_output=True, text=True,
        )
        errors = [line[len("error: "):] for line in proc.stderr.splitlines() if line.startswith("error: ")]
        other = [line for line in proc.stderr.splitlines() if not line.startswith("error: ")]
        if proc.returncode:
            print(proc.stdout, end="")
            if errors:
                raise (UsageError if proc.returncode == UsageError.exit_code else UserError)(
                    f"{errors[-1]}; nothing was queued"
                )
            sys.stderr.write("\n".join(other[-30:]) + "\n")
            raise UserError(
                f"the checks before queueing crashed in {code} (exit {proc.returncode}; its output is above); nothing"
                " was queued"
            )
        if other:
            sys.stderr.write("\n".join(other) + "\n")
        return read_json(out, list), proc.stdout


@contextlib.contextmanager
def job_code(args, log_dir: Path):
    """The code and working directory jobs run with: a snapshot of the tracked files (a temporary
    one for --dry-run), or with --no-snapshot / --cluster debug the live checkout. Yields (code, cwd)."""
    from semisup.cluster.snapshot import take_snapshot
    if args.no_snapshot or args.cluster == "debug":
        yield REPO, Path.cwd()
        return
    with contextlib.ExitStack() as stack:
        base = (Path(stack.enter_context(tempfile.TemporaryDirectory())) / "code" if args.dry_run
                else log_dir / "code" / time.strftime("%Y%m%d-%H%M%S"))
        # What this submission makes is removed again if nothing is queued: the first missing folder.
        created = next((p for p in [*reversed(base.parent.parents), base.parent] if not p.exists()), None)
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):  # submissions in one second (a script, a sweep's points): each its own name
            dest = base if n == 1 else base.with_name(f"{base.name}.{n}")
            try:
                dest.mkdir()  # atomic: a name checked free could be taken by another submission before use
                break
            except FileExistsError:
                continue
        created = created or dest
        info = take_snapshot(dest)
        dirty = " with uncommitted edits to tracked files (recorded as dirty)" if info["dirty"] else ""
        kind = "temporary code snapshot for the checks" if args.dry_run else "code snapshot"
        print(
            f"{kind} {dest}: commit {info['commit'][:12]}{dirty}, {info['files']} files, {info['bytes'] / 1e6:.1f} MB"
        )
        if info["untracked"]:
            print(f"not in the snapshot (untracked; `git add` them to include): {', '.join(info['untracked'][:8])}"
                  + (" ..." if len(info["untracked"]) > 8 else ""))
        try:
            yield dest, dest
        except BaseException:
            if not args.dry_run:
                shutil.rmtree(created, ignore_errors=True)  # nothing was queued from it: leave no folder behind
            raise


@contextlib.contextmanager
def _job_environment(code: Path, cwd: Path):
    """Submit from the job's working directory with its code importable: submitit starts local
    jobs, and sbatch starts Slurm jobs, in the submitting process's folder and environment."""
    previous_cwd, previous_path = Path.cwd(), os.environ.get("PYTHONPATH")
    os.chdir(cwd)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), previous_path) if p)
    try:
        yield
    finally:
        os.chdir(previous_cwd)
        if previous_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous_path


def job_commands(args, run_flags: list[str]) -> tuple[str, list[tuple[str, list[str]]]]:
    """(job name, [(run name, flags)]) with run directories given and absolute."""
    if args.sweep:
        if run_dir_of(run_flags) is not None:
            raise UsageError("--run-dir after -- would send every point of the sweep into one folder; each point gets "
                             "its own under --run-root (pass --run-root instead)")
        sweep_name, commands = sweep_commands(args.sweep.resolve(), args.run_root.resolve())
        return args.name or sweep_name, [(name, flags + run_flags) for name, flags in commands]
    from semisup.config import parse_config
    from semisup.train.rundir import default_run_dir
    # The same name run.py gives the run (validating its flags now, before queueing), so two
    # submissions never share a folder and a resubmitted job finds its own.
    name = args.name or check_name(default_run_dir(parse_config(run_flags)).name,
                                   "the run name made from the dataset's folder name (pass --name)")
    return name, [(name, with_run_dir(run_flags, args.run_root.resolve() / name))]


def main(argv: list[str] | None = None) -> list:
    argv = sys.argv[1:] if argv is None else list(argv)
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    check_args(args)
    slurm = slurm_meant(args)
    if not slurm and args.nodes > 1:  # submitit's local executor raises ValueError only when it submits
        raise UsageError(f"--nodes {args.nodes}: --cluster {args.cluster} runs on this machine, one node; "
                         "pass --cluster slurm for several nodes, or --nodes 1")
    log_dir = args.log_dir.resolve()
    # Names and sweep values are checked here, before anything is created.
    args.name, commands = job_commands(args, run_flags + (["--overwrite"] if args.overwrite else []))
    if slurm and not args.dry_run and not shutil.which("sbatch"):
        raise UsageError(
            "Slurm is meant (--cluster slurm, --partition, --gpus-per-node, --nodes, ...) but sbatch is not on this "
            "machine's PATH: submit from a Slurm login node, add --dry-run to preview, or pass --cluster local"
        )
    part, part_note = target_partition(args, slurm)
    pinned, reads, cpus_note = pinned_commands(args, commands, slurm, part)
    if part is not None:  # a job the partition can never start is refused before anything is checked or queued
        check_fits(part, args.nodes, tasks_per_node(args), args.gpus_per_node, args.cpus_per_task,
                   args.timeout_min or 0, "--timeout-min")
    with job_code(args, log_dir) as (code, cwd):
        checked, report = preflight(pinned, total_tasks(args), code, cwd, decode_check=args.dry_run)
        args.timeout_min, time_note = default_timeout(args, checked, slurm, part)
        notes = [n for n in (part_note, cpus_note, time_note) if n]
        if args.dry_run:
            preview(args, pinned, log_dir, slurm, notes, report)
            return []
        print(report, end="")
        print("; ".join(notes))
        with _job_environment(code, cwd):
            executor = make_executor(argparse.Namespace(**dict(vars(args), cluster="slurm" if slurm else args.cluster)),
                                     log_dir / "%j", tasks_per_node(args))
            jobs = submit(executor, [TrainJob(flags) for _, flags in pinned], log_dir)
    literal = log_dir / "%j"  # submitit's local executors make the folder pattern itself, empty, beside the jobs'
    if literal.is_dir() and not any(literal.iterdir()):
        literal.rmdir()
    for (name, flags), job, read, check in zip(pinned, jobs, reads, checked):
        split_file = check["summary"].get("split_file", read.get("split_file"))
        files = dict(read, split_file=split_file, code=str(code), cwd=str(cwd))
        files = {k: v for k, v in files.items() if v is not None}
        if executor.cluster != "debug":
            record_job(Path(run_dir_of(flags)), job, executor.cluster, name, reads=files)
        print(f"submitted {name}: job {job.job_id}, logs {job.paths.folder}, run dir {run_dir_of(flags)}")
    if executor.cluster == "debug":
        run_in_process(pinned, jobs, reads)
    return jobs


def target_partition(args, slurm: bool) -> tuple[Partition | None, str | None]:
    """(the partition a Slurm job goes to, with its limits; a note when they are not checked):
    --partition, else ``--sbatch partition=``, else $SBATCH_PARTITION (as sbatch reads it), else
    the cluster's default."""
    if not slurm:
        return None, None
    extra = dict(kv.split("=", 1) for kv in args.sbatch)
    name, flag = next(((v, f) for v, f in ((args.partition, "--partition"),
                                           (extra.get("partition"), "--sbatch partition="),
                                           (os.environ.get("SBATCH_PARTITION"), "$SBATCH_PARTITION")) if v),
                      (None, "--partition"))
    if name is not None and "," in name:
        return None, f"partition limits not checked: {flag} {name} names several (sbatch picks one)"
    partitions = read_partitions()
    if partitions is None:
        return None, "partition limits not checked: scontrol does not answer on this machine"
    part = choose(partitions, name, flag)
    state = "" if part.state == "UP" else f"; partition {part.name} is {part.state}: jobs wait until it is UP"
    return part, (f"partition {part.name}: {len(part.nodes)} node(s), MaxTime "
                  f"{part.max_time_min if part.max_time_min is not None else 'UNLIMITED'} min{state}")


def pinned_commands(
    args, commands: list[tuple[str, list[str]]], slurm: bool, part: Partition | None = None
) -> tuple[list, list, str]:
    """The jobs' run.py flags with every path absolute (and the fitted --workers), what each reads,
    and the line saying how the CPUs were shared."""
    from semisup.config import parse_config

    pinned, reads = [], []
    for name, flags in commands:
        flags, read = pin_paths(flags, Path.cwd())
        pinned.append((name, flags))
        reads.append(read)
    first = parse_config(pinned[0][1])
    given = any(a == "--workers" or a.startswith("--workers=") for a in pinned[0][1])
    args.cpus_per_task, workers, cpus_note = fit_cpus(args, first.workers if given else None, first.workers, slurm,
                                                      part)
    if workers is not None:
        pinned = [(name, flags + ["--workers", str(workers)]) for name, flags in pinned]
    return pinned, reads, cpus_note


def run_in_process(pinned: list[tuple[str, list[str]]], jobs: list, reads: list[dict]) -> None:
    """--cluster debug: submitit's DebugExecutor runs a job when its result is asked for, here."""
    for (name, flags), job, read in zip(pinned, jobs, reads):
        run_dir = Path(run_dir_of(flags))
        try:
            result = job.result()
        except Exception as err:
            record_job(run_dir, job, "debug", name, reads=read, state="FAILED", error=f"{type(err).__name__}: {err}")
            raise
        record_job(run_dir, job, "debug", name, reads=read, state="COMPLETED")
        top1 = result["final"].get("top1", float("nan"))
        print(f"finished {name} in-process: {result.get('steps')} steps, final top-1 {top1:.2f}")


SIGNALS_NOTE = (
    "# signals: USR2 {delay} s before the time limit (the run checkpoints, submitit requeues the job); SIGTERM at "
    "scancel, scontrol requeue and preemption (the run checkpoints within the cluster's KillWait, 30 s by default, and "
    "Slurm requeues or ends the job); preemption sends USR2 only where SlurmctldParameters=preempt_send_user_signal"
)


def preview(
    args, commands: list[tuple[str, list[str]]], log_dir: Path, slurm: bool, notes: list[str], report: str
) -> None:
    """--dry-run: the exact sbatch script (whenever Slurm is meant, sbatch here or not), how CPUs
    and time were chosen, and each job's flags as it will receive them."""
    if slurm:
        what = "each job" if len(commands) == 1 else f"the array of {len(commands)} jobs (one per grid point)"
        print(f"# sbatch script of {what}, as sbatch will receive it:")
        print(sbatch_script(args, log_dir, tasks_per_node(args), len(commands)), end="")
        print("# (end of the sbatch script)")
        print(SIGNALS_NOTE.format(delay=args.signal_delay_s))
    else:
        print(
            f"# {args.cluster if args.cluster != 'auto' else 'local'}: {total_tasks(args)} task(s) on this machine,"
            f" logs under {log_dir}"
        )
    for note in notes:
        print(f"# {note}")
    for name, flags in commands:
        print(f"# {name}: run.py {' '.join(flags)}")
    print(report, end="")
    print(
        f"\ndry run: {len(commands)} job(s) checked in a snapshot of the code, from its folder, as each job will start;"
        " nothing queued"
    )


@cli
def console(argv: list[str] | None = None) -> int:
    """``jobs/submit.py`` and ``semisup-submit``: exit 0 once the jobs are queued (or checked, for --dry-run)."""
    main(argv)  # returns the submitted jobs (none for --dry-run)
    return 0
