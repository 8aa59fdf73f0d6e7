"""Where every run under a folder stands, and its job with it.

    python jobs/status.py runs/imagenet-1pct

A row per run directory (one with config.yaml, or with job.json: submitted, perhaps never
started): the run's own state (finished / in progress / not started, truncated runs said so),
its last step and ETA (progress.json), best and final metrics; and its latest job's scheduler
state (submitit's result file, else Slurm's ``sacct`` through submitit, else whether the local
process lives), the error a failed job raised, and the log to read.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd

from semisup.errors import Parser, UserError, cli
from semisup.files import RunFileError, read_json
from semisup.runfiles import RunFiles


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
            frame = pd.read_csv(metrics)
            if len(frame):
                row.update(epoch=int(frame["epoch"].iloc[-1]), step=int(frame["step"].iloc[-1]))
                if "top1" in frame and frame["top1"].notna().any():
                    best = frame.loc[frame["top1"].idxmax()]
                    row.update(best_epoch=int(best["epoch"]), best_top1=best["top1"])
        except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
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
        try:
            result = read_json(final)
            metrics_final = result.get("final") if isinstance(result.get("final"), dict) else {}
            row["state"] = (
                f"finished (truncated by --max-steps at step {result.get('steps')})"
                if result.get("truncated")
                else "finished"
            )
            row["eta"] = None
            row.update({f"final_{k}": metrics_final.get(k) for k in ("top1", "top5", "ch")})
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
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    line = exception_line(tail)
    return line if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b", line) else None


def job_state(record: dict, run_dir: Path) -> dict:
    """Scheduler view of one submitted job: scheduler state, exit code, error, log path.

    Read from files in formats that cannot run code: the job's own ``job-outcome.json`` (written
    by the job when it ends), Slurm's ``sacct``, whether a local job's process lives, and the last
    exception line of its text log. submitit's pickled result files are never opened: a runs folder
    received from someone else must not execute their code."""
    job_id = str(record.get("job_id"))
    log_path = record.get("stderr")
    out = dict(job=job_id, scheduler="UNKNOWN", exit=None, error=None, log=log_path)
    if record.get("state"):  # --cluster debug: the outcome was recorded in-process
        return dict(out, scheduler=record["state"], error=record.get("error"))
    outcome_path = RunFiles(run_dir).outcome
    if outcome_path.is_file():
        try:
            outcome = read_json(outcome_path)
            if str(outcome.get("job_id")) == job_id and outcome.get("state") in ("COMPLETED", "FAILED"):
                return dict(out, scheduler=outcome["state"], error=outcome.get("error"))
        except UserError as err:
            out["error"] = str(err)
    if record.get("cluster") == "slurm":
        try:
            import submitit
            info = submitit.SlurmJob(record["folder"], job_id).get_info(mode="force")  # sacct
        except Exception:  # sacct missing or failing: say so, keep the table
            info = {}
        return dict(out, scheduler=info.get("State") or "UNKNOWN (no answer from sacct)", exit=info.get("ExitCode"))
    # Local: the job id is the controller's pid; no outcome and no process means it died early or was killed.
    try:
        os.kill(int(job_id), 0)
        alive = True
    except (ProcessLookupError, ValueError, OverflowError):
        alive = False
    except PermissionError:
        alive = True
    if alive:
        return dict(out, scheduler="RUNNING")
    return dict(out, scheduler="DIED", error=out["error"] or _log_error(log_path) or "no outcome recorded (killed?)")


def run_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    marks = list(root.rglob(RunFiles.CONFIG)) + list(root.rglob(RunFiles.JOBS))
    return sorted({p.parent for p in marks if "replaced-" not in p.parent.name})


def status_table(root: Path) -> pd.DataFrame:
    rows = []
    for run_dir in run_dirs(root):
        row = dict(run=str(run_dir.relative_to(root)) if run_dir != root else run_dir.name, **run_state(run_dir))
        jobs = RunFiles(run_dir).jobs
        if jobs.exists():
            try:
                history = read_json(jobs, list)
                if not history or not all(isinstance(h, dict) and "job_id" in h for h in history):
                    raise RunFileError(f"{jobs}: expected a list of job records with job_id")
                row.update(job_state(history[-1], run_dir))
                row["submissions"] = len(history)
            except UserError as err:
                row.update(scheduler="UNKNOWN", error=str(err))
            # The run's files and the scheduler together say more than either alone.
            if row["scheduler"] == "RUNNING" and not row["state"].startswith("finished"):
                row["state"] = "starting" if row["state"] == "not started" else "in progress"
            elif row["state"] == "in progress / stopped" and row["scheduler"] in ("FAILED", "DIED", "COMPLETED"):
                row["state"] = "stopped"
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("epoch", "step", "best_epoch", "submissions"):  # counts stay integers where some rows lack them
        if column in table:
            table[column] = table[column].astype("Int64")
    first = [c for c in ("run", "state", "job", "scheduler", "exit", "epoch", "step", "eta") if c in table]
    last = [c for c in ("problem", "error", "log") if c in table]
    return table[first + [c for c in table if c not in first and c not in last] + last]


@cli
def main(argv=None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_root", type=Path, help="a run directory or a folder of them")
    args = parser.parse_args(argv)
    if not run_dirs(args.run_root):
        raise UserError(f"no run directories (with config.yaml or job.json) under {args.run_root}")
    table = status_table(args.run_root)
    table = table.drop(columns=[c for c in table if table[c].isna().all()])  # e.g. exit codes, known only from sacct
    shown = table.drop(columns=[c for c in ("problem", "error", "log") if c in table])
    for column in shown:
        fmt = (lambda v: f"{v:.2f}") if pd.api.types.is_float_dtype(shown[column]) else str
        shown[column] = [("-" if pd.isna(v) else fmt(v)) if not isinstance(v, str) else v for v in shown[column]]
    print(shown.to_string(index=False))
    records = table.to_dict("records")
    for row in records:  # failed jobs: what they raised and where their log is
        scheduler = row.get("scheduler") if isinstance(row.get("scheduler"), str) else ""
        if isinstance(row.get("error"), str) or scheduler.startswith(
            ("FAILED", "DIED", "CANCELLED", "TIMEOUT", "OUT_OF", "NODE_FAIL")
        ):
            error = row["error"] if isinstance(row.get("error"), str) else "no error recorded"
            print(
                f"\n{row['run']}: job {row.get('job')} {scheduler}: {error[:200]}{'...' if len(error) > 200 else ''}\n "
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
