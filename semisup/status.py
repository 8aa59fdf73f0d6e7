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
import json
import os
import re
import sys
from pathlib import Path

import pandas as pd

from semisup.errors import UserError, cli


def run_state(run_dir: Path) -> dict:
    """The run's own files: state, epoch, step, ETA, best and final metrics."""
    row = dict(state="not started", epoch=0, step=0)
    metrics = run_dir / "metrics.csv"
    if (run_dir / "checkpoint.pt").exists() or metrics.exists() or (run_dir / "progress.json").exists():
        row["state"] = "in progress / stopped"
    if metrics.exists():
        frame = pd.read_csv(metrics)
        if len(frame):
            row.update(epoch=int(frame["epoch"].iloc[-1]), step=int(frame["step"].iloc[-1]))
            if "top1" in frame and frame["top1"].notna().any():
                best = frame.loc[frame["top1"].idxmax()]
                row.update(best_epoch=int(best["epoch"]), best_top1=best["top1"])
    progress = run_dir / "progress.json"
    if progress.exists():
        latest = json.loads(progress.read_text())
        if latest["step"] >= row["step"]:
            row.update(epoch=latest["epoch"], step=latest["step"])
            row["eta"] = f"{latest['eta_s'] / 60:.0f} min" if latest.get("eta_s") is not None else None
    final = run_dir / "final.json"
    if final.exists():
        result = json.loads(final.read_text())
        row["state"] = f"finished (truncated by --max-steps at step {result.get('steps')})" if result.get("truncated") else "finished"
        row["eta"] = None
        row.update({f"final_{k}": result["final"].get(k) for k in ("top1", "top5", "ch")})
    return row


def exception_line(trace: str) -> str:
    """The ``SomeError: message`` line of a traceback (the last such line: the one raised last;
    messages may span lines, so the last line is not it)."""
    lines = [line.strip() for line in str(trace).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line[:300]
    return lines[-1][:300] if lines else ""


def job_state(record: dict) -> dict:
    """Scheduler view of one submitted job: scheduler state, exit code, error, log path."""
    import submitit
    from submitit.core.utils import JobPaths, pickle_load

    paths = JobPaths(record["folder"], record["job_id"], 0)
    out = dict(job=record["job_id"], scheduler="UNKNOWN", exit=None, error=None, log=record.get("stderr") or str(paths.stderr))
    if record.get("state"):  # --cluster debug: the outcome was recorded in-process
        return dict(out, scheduler=record["state"], error=record.get("error"))
    if paths.result_pickle.exists():
        try:
            outcome, value = pickle_load(paths.result_pickle)
        except Exception as err:  # a half-written result: report, never crash the table
            return dict(out, scheduler="UNKNOWN", error=f"unreadable {paths.result_pickle.name} ({type(err).__name__})")
        if outcome == "success":
            return dict(out, scheduler="COMPLETED")
        return dict(out, scheduler="FAILED", error=exception_line(value))
    if record["cluster"] == "slurm":
        try:
            info = submitit.SlurmJob(record["folder"], record["job_id"]).get_info(mode="force")  # sacct
        except Exception:  # sacct missing or failing: say so, keep the table
            info = {}
        return dict(out, scheduler=info.get("State") or "UNKNOWN (no answer from sacct)", exit=info.get("ExitCode"))
    # Local: the job id is the controller's pid; no result file and no process means it was killed.
    try:
        os.kill(int(record["job_id"]), 0)
        alive = True
    except (ProcessLookupError, ValueError):
        alive = False
    except PermissionError:
        alive = True
    return dict(out, scheduler="RUNNING" if alive else "DIED (no result: killed?)")


def run_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    marks = list(root.rglob("config.yaml")) + list(root.rglob("job.json"))
    return sorted({p.parent for p in marks if "replaced-" not in p.parent.name})


def status_table(root: Path) -> pd.DataFrame:
    rows = []
    for run_dir in run_dirs(root):
        row = dict(run=str(run_dir.relative_to(root)) if run_dir != root else run_dir.name, **run_state(run_dir))
        jobs = run_dir / "job.json"
        if jobs.exists():
            history = json.loads(jobs.read_text())
            row.update(job_state(history[-1]))
            row["submissions"] = len(history)
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("epoch", "step", "best_epoch", "submissions"):  # counts stay integers where some rows lack them
        if column in table:
            table[column] = table[column].astype("Int64")
    first = [c for c in ("run", "state", "job", "scheduler", "exit", "epoch", "step", "eta") if c in table]
    return table[first + [c for c in table if c not in first and c not in ("error", "log")] + [c for c in ("error", "log") if c in table]]


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_root", type=Path, help="a run directory or a folder of them")
    args = parser.parse_args(argv)
    if not run_dirs(args.run_root):
        raise UserError(f"no run directories (with config.yaml or job.json) under {args.run_root}")
    table = status_table(args.run_root)
    table = table.drop(columns=[c for c in table if table[c].isna().all()])  # e.g. exit codes, known only from sacct
    shown = table.drop(columns=[c for c in ("error", "log") if c in table])
    for column in shown:
        fmt = (lambda v: f"{v:.2f}") if pd.api.types.is_float_dtype(shown[column]) else str
        shown[column] = [("-" if pd.isna(v) else fmt(v)) if not isinstance(v, str) else v for v in shown[column]]
    print(shown.to_string(index=False))
    records = table.to_dict("records")
    for row in records:  # failed jobs: what they raised and where their log is
        scheduler = row.get("scheduler") if isinstance(row.get("scheduler"), str) else ""
        if isinstance(row.get("error"), str) or scheduler.startswith(("FAILED", "DIED", "CANCELLED", "TIMEOUT", "OUT_OF", "NODE_FAIL")):
            error = row["error"] if isinstance(row.get("error"), str) else "no error recorded"
            print(f"\n{row['run']}: job {row.get('job')} {scheduler}: {error[:200]}{'...' if len(error) > 200 else ''}\n  log: {row.get('log')}")
    logs = [f"\n  {r['run']}: {r['log']}" for r in records if isinstance(r.get("log"), str)]
    if logs:
        print("\nlogs:" + "".join(logs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
