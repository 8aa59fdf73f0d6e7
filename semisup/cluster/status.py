"""Where every run under a folder stands, and its job with it.

    python jobs/status.py runs/imagenet-1pct

A row per run directory (one with config.yaml, or with job.json: submitted, perhaps never
started): the run's own state (finished / in progress / queued / stopped / not started, truncated
runs said so), its last step and, while it trains, its ETA (progress.json), best and final
metrics; and its latest job's scheduler state with where it came from (``source``: Slurm's
``squeue``/``scontrol``, ``sacct`` for jobs the controller has forgotten, the job's own
``job-outcome.json``, a local job's process; a run started without a job: its lock), the error a
failed or stopped job gave, and the log to read.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd

from semisup import scheduler
from semisup.errors import Parser, UserError, cli, printable
from semisup.files import RunFileError, open_regular, read_csv, read_json
from semisup.registry import METRICS
from semisup.runfiles import RunFiles
from semisup.train import runlock


def run_state(run_dir: Path) -> dict:
    """The run's own files: state, epoch, step, ETA, best and final metrics. A damaged file is
    reported in the row (``problem``), never a reason for the table to fail."""
    row = dict(state="not started", epoch=0, step=0)
    problems = []
    metrics = RunFiles(run_dir).metrics
    if RunFiles(run_dir).checkpoint.exists() or metrics.exists() or RunFiles(run_dir).progress.exists():
        row["state"] = "in progress / stopped"
    if metrics.exists():
        try:
            frame = read_csv(metrics)
            if len(frame):
                row.update(epoch=int(frame["epoch"].iloc[-1]), step=int(frame["step"].iloc[-1]))
                if "top1" in frame and frame["top1"].notna().any():
                    best = frame.loc[frame["top1"].idxmax()]
                    row.update(best_epoch=int(best["epoch"]), best_top1=best["top1"])
        except RunFileError as err:
            problems.append(str(err))
        except (OSError, ValueError, KeyError) as err:
            problems.append(f"{metrics}: unreadable ({type(err).__name__})")
    progress = RunFiles(run_dir).progress
    if progress.exists():
        try:
            latest = read_json(progress)
            if int(latest["step"]) >= row["step"]:
                row.update(epoch=int(latest["epoch"]), step=int(latest["step"]))
                row["eta"] = (
                    f"{latest['eta_s'] / 60:.0f} min" if isinstance(latest.get("eta_s"), (int, float)) else None
                )
        except (UserError, KeyError, TypeError, ValueError) as err:
            problems.append(str(err) if isinstance(err, UserError) else f"{progress}: missing or odd entries ({err})")
    final = RunFiles(run_dir).final
    if final.exists():
        headline = METRICS.headline()  # loads the plugins: one that cannot be imported is its own error
        try:
            result = read_json(final)
            metrics_final = result.get("final") if isinstance(result.get("final"), dict) else {}
            row["state"] = (
                f"finished (truncated by --max-steps at step {result.get('steps')})"
                if result.get("truncated")
                else "finished"
            )
            row["eta"] = None
            # The headline metrics' declarations name the columns: top1, top5, ch and a plugin's own.
            row.update({f"final_{k}": metrics_final.get(k) for k in headline})
        except UserError as err:
            row["state"] = "damaged final.json"
            problems.append(
                f"{err}; move it aside and rerun the same command to finish the run again from its checkpoint"
            )
    if problems:
        row["problem"] = "; ".join(problems)
    return row


def exception_line(trace: str) -> str:
    """The ``SomeError: message`` line of a traceback (the last such line: the one raised last;
    messages may span lines, so the last line is not it)."""
    lines = [line.strip() for line in str(trace).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else ""


def _log_error(log_path: str | None) -> str | None:
    """The last exception line of a job's stderr log (plain text), if it has one."""
    if not log_path:
        return None
    try:
        with open_regular(log_path) as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            tail = f.read().decode("utf-8", errors="replace")
    except (OSError, RunFileError):
        return None
    line = exception_line(tail)
    return line if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line) else None


def _own_outcome(run_dir: Path, job_id: str) -> tuple[dict | None, str | None]:
    """(the job's own account of how it ended, a problem reading it): ``job-outcome.json`` when it
    names this job, written by the job itself (COMPLETED, FAILED, or STOPPED by a signal with its
    checkpoint written)."""
    path = RunFiles(run_dir).outcome
    if not path.is_file():
        return None, None
    try:
        outcome = read_json(path)
    except UserError as err:
        return None, str(err)
    if str(outcome.get("job_id")) == job_id and outcome.get("state") in ("COMPLETED", "FAILED", "STOPPED"):
        return outcome, None
    return None, None


def job_state(record: dict, run_dir: Path, answer: scheduler.JobState | None = None) -> dict:
    """Scheduler view of one submitted job: its state, where that came from (``source``), exit
    code, error and log path.

    Slurm's own commands first (``answer``: squeue/scontrol, or sacct where the controller has
    forgotten the job), then the job's own ``job-outcome.json``, then, for a local job, whether
    its process lives and the last exception line of its text log. submitit's pickled result
    files are never opened: a runs folder received from someone else must not execute their code."""
    job_id = str(record.get("job_id"))
    log_path = record.get("stderr")
    out = dict(job=job_id, scheduler="UNKNOWN", source=None, exit=None, error=None, log=log_path)
    if record.get("state"):  # --cluster debug: the outcome was recorded in-process
        return dict(out, scheduler=record["state"], source="in-process", error=record.get("error"))
    outcome, problem = _own_outcome(run_dir, job_id)
    out["error"] = problem
    if record.get("cluster") == "slurm":
        if answer is not None and (answer.active or answer.queued):
            pending = f" ({answer.reason})" if answer.queued and answer.reason else ""
            return dict(out, scheduler=answer.state + pending, source=answer.source)
        if answer is not None:  # ended: Slurm's state; the job's own record (of this start of it) says why
            if outcome is not None and None not in (outcome.get("restarts"), answer.restarts) and \
                    outcome["restarts"] != answer.restarts:
                outcome = None  # written by an earlier start of the job, before a requeue
            error = (outcome or {}).get("error") or out["error"]
            if answer.state != "COMPLETED":
                error = error or _log_error(log_path)
            return dict(out, scheduler=answer.state, source=answer.source, exit=answer.exit_code, error=error)
        if outcome is not None:
            return dict(out, scheduler=outcome["state"], source=RunFiles.OUTCOME, error=outcome.get("error"))
        return dict(out, scheduler="UNKNOWN", source="none",
                    error=out["error"] or "no Slurm command knows this job any more and it recorded no outcome")
    if outcome is not None:
        return dict(out, scheduler=outcome["state"], source=RunFiles.OUTCOME, error=outcome.get("error"))
    # Local: the job id is the controller's pid; no outcome and no process means it died early or was killed.
    if local_job_alive(record):
        return dict(out, scheduler="RUNNING", source="process")
    return dict(out, scheduler="DIED", source="process",
                error=out["error"] or _log_error(log_path) or "no outcome recorded (killed?)")


def local_job_alive(record: dict) -> bool:
    """Whether a local job's process still runs: its pid, and where the record holds them, the
    same boot and process start time (a pid reused by another process after the job ended, or
    after a reboot, is not the job)."""
    from semisup.train.runlock import boot_id, process_start
    try:
        pid = int(record.get("job_id"))
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError, TypeError):
        return False
    except PermissionError:
        pass  # another user's process of that pid: judged by its start time below
    if record.get("boot") and record.get("boot") != boot_id():
        return False
    recorded = record.get("process_start")
    return recorded is None or process_start(pid) == recorded


def run_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    marks = list(root.rglob(RunFiles.CONFIG)) + list(root.rglob(RunFiles.JOBS))
    return sorted({p.parent for p in marks if "replaced-" not in p.parent.name})


def latest_job(run_dir: Path) -> tuple[dict | None, int, str | None]:
    """(the run folder's latest job record, how many submissions it has, a problem reading them)."""
    jobs = RunFiles(run_dir).jobs
    if not jobs.exists():
        return None, 0, None
    try:
        history = read_json(jobs, list)
        if not history or not all(isinstance(h, dict) and "job_id" in h for h in history):
            raise RunFileError(f"{jobs}: expected a list of job records with job_id")
    except UserError as err:
        return None, 0, str(err)
    return history[-1], len(history), None


def _by_lock(row: dict, run_dir: Path) -> dict:
    """A run's state where no scheduler tells: in progress while a live process holds its lock."""
    if row["state"] != "in progress / stopped":
        return row
    try:
        holder = runlock.read_holder(run_dir)
    except OSError:
        return dict(row, state="unknown (its lock cannot be read)")
    held = holder is not None and runlock.holder_alive(holder)[0]
    return dict(row, state="in progress" if held else "stopped", eta=row.get("eta") if held else None,
                source=row.get("source") if row.get("scheduler") else "lock")


def _combine(row: dict, run_dir: Path) -> dict:
    """The run's files and the scheduler together say more than either alone; a run nothing
    trains has no ETA. Where no scheduler answered, the run's lock tells whether it trains."""
    scheduler_state = row.get("scheduler") or ""
    if scheduler_state.startswith("UNKNOWN"):
        return _by_lock(row, run_dir)
    running = scheduler_state.startswith(("RUNNING", "COMPLETING", "CONFIGURING"))
    if running and not row["state"].startswith("finished"):
        row["state"] = "starting" if row["state"] == "not started" else "in progress"
    elif row["state"] == "in progress / stopped" and scheduler_state:
        row["state"] = "queued" if scheduler_state.startswith(tuple(scheduler.QUEUED)) else "stopped"
    if not running:
        row["eta"] = None
    return row


def status_table(root: Path) -> pd.DataFrame:
    dirs = run_dirs(root)
    latest = {run_dir: latest_job(run_dir) for run_dir in dirs}
    slurm_ids = [str(rec["job_id"]) for rec, _, _ in latest.values() if rec and rec.get("cluster") == "slurm"]
    answers = scheduler.slurm_jobs(slurm_ids)  # one query for every job of the table
    rows = []
    for run_dir in dirs:
        row = dict(run=str(run_dir.relative_to(root)) if run_dir != root else run_dir.name, **run_state(run_dir))
        record, submissions, problem = latest[run_dir]
        if record is not None:
            row.update(job_state(record, run_dir, answers.get(str(record["job_id"]))), submissions=submissions)
            row = _combine(row, run_dir)
        elif problem is not None:
            row.update(scheduler="UNKNOWN", error=problem)
        elif row["state"] == "in progress / stopped":  # started with run.py: its lock says whether it trains
            row = _by_lock(row, run_dir)
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("epoch", "step", "best_epoch", "submissions"):  # counts stay integers where some rows lack them
        if column in table:
            table[column] = table[column].astype("Int64")
    first = [c for c in ("run", "state", "job", "scheduler", "source", "exit", "epoch", "step", "eta") if c in table]
    last = [c for c in ("problem", "error", "log") if c in table]
    return table[first + [c for c in table if c not in first and c not in last] + last]


@cli
def main(argv=None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_root", type=Path, help="a run directory or a folder of them")
    args = parser.parse_args(argv)
    if not run_dirs(args.run_root):
        raise UserError(f"no run directories (with config.yaml or job.json) under {args.run_root}")
    # Every string shown came from files someone else may have made: control characters escaped.
    table = status_table(args.run_root).map(lambda v: printable(v) if isinstance(v, str) else v)
    table = table.drop(columns=[c for c in table if table[c].isna().all()])  # e.g. exit codes, known once a job ended
    shown = table.drop(columns=[c for c in ("problem", "error", "log") if c in table])
    for column in shown:
        fmt = (lambda v: f"{v:.2f}") if pd.api.types.is_float_dtype(shown[column]) else str
        shown[column] = [("-" if pd.isna(v) else fmt(v)) if not isinstance(v, str) else v for v in shown[column]]
    print(shown.to_string(index=False))
    records = table.to_dict("records")
    for row in records:  # failed jobs: what they raised and where their log is
        state = row.get("scheduler") if isinstance(row.get("scheduler"), str) else ""
        if isinstance(row.get("error"), str) or state.startswith(
            ("FAILED", "DIED", "CANCELLED", "TIMEOUT", "OUT_OF", "NODE_FAIL", "STOPPED", "PREEMPTED")
        ):
            error = row["error"] if isinstance(row.get("error"), str) else "no error recorded"
            print(
                f"\n{row['run']}: job {row.get('job')} {state}: {error[:200]}{'...' if len(error) > 200 else ''}\n "
                f" log: {row.get('log')}"
            )
    for row in records:  # damaged run files: what is wrong and what to do
        if isinstance(row.get("problem"), str):
            print(f"\n{row['run']}: {row['problem']}")
    logs = [f"\n  {r['run']}: {r['log']}" for r in records if isinstance(r.get("log"), str)]
    if logs:
        print("\nlogs:" + "".join(logs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
