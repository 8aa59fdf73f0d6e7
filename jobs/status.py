"""State of every run under a folder: finished / in progress / not started, last epoch, metrics.

    python jobs/status.py runs/imagenet-1pct
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def run_status(run_dir: Path) -> dict:
    row = dict(run=str(run_dir), state="not started", epoch=0, step=0)
    metrics = run_dir / "metrics.csv"
    if (run_dir / "checkpoint.pt").exists() or metrics.exists():
        row["state"] = "in progress / preempted"
    if metrics.exists():
        frame = pd.read_csv(metrics)
        if len(frame):
            row.update(epoch=int(frame["epoch"].iloc[-1]), step=int(frame["step"].iloc[-1]))
            if "top1" in frame and frame["top1"].notna().any():
                best = frame.loc[frame["top1"].idxmax()]
                row.update(best_epoch=int(best["epoch"]), best_top1=best["top1"])
    final = run_dir / "final.json"
    if final.exists():
        result = json.loads(final.read_text())
        row["state"] = f"finished (truncated by --max-steps at step {result.get('steps')})" if result.get("truncated") else "finished"
        row.update({f"final_{k}": result["final"].get(k) for k in ("top1", "top5", "ch")})
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_root", type=Path, help="a run directory or a folder of them")
    args = parser.parse_args(argv)
    dirs = sorted({p.parent for p in args.run_root.rglob("config.yaml")})
    if not dirs:
        print(f"no run directories (with config.yaml) under {args.run_root}", file=sys.stderr)
        return 1
    table = pd.DataFrame([run_status(d) for d in dirs])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
