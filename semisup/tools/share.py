"""``semisup-bench share``: do two runs on one machine get in each other's way?

    semisup-bench share [--steps 40] [--repeats 2] [--compare] [--out FILE]

Runs one short demo run alone, then two at once (the same command twice, each in its own process
and run folder), and prints the ratio of the pair's wall time to the single run's: 1 where the
machine has room for both, 2 where they share it evenly, more where they get in each other's way
(threads spinning against each other). ``--compare`` measures the same beside it with OpenMP's
spinning waits (``OMP_WAIT_POLICY=ACTIVE``, torch's default before ``semisup.cpus``), alternately,
so that the two ratios come from one run of the benchmark. One JSON line per variant.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from semisup.config import PROJECT_ROOT
from semisup.errors import Parser, UsageError, UserError
from semisup.files import write_json_atomic
from semisup.tools.measure import emit

VARIANTS = {"default": {}, "spinning": {"OMP_WAIT_POLICY": "ACTIVE"}}


def run_command(steps: int, run_dir: Path, cache: Path) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "semisup" / "run.py"), "--labeled-fraction", "0.1", "--epochs", "1",
            "--batch-labeled", "32", "--batch-unlabeled", "32", "--max-eval-images", "32", "--gallery", "0",
            "--workers", "0", "--max-steps", str(steps), "--demo-cache", str(cache), "--run-dir", str(run_dir)]


def timed_runs(count: int, steps: int, work: Path, cache: Path, extra_env: dict) -> float:
    """Wall seconds of ``count`` runs started together (each in a folder of its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(extra_env)
    start = time.perf_counter()
    procs = []
    for _ in range(count):
        run_dir = Path(tempfile.mkdtemp(dir=work)) / "run"
        procs.append(subprocess.Popen(run_command(steps, run_dir, cache), env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    failed = [p.communicate()[1] for p in procs if p.wait() != 0]
    if failed:
        raise UserError(f"a benchmark run failed: {failed[0].strip().splitlines()[-1] if failed[0].strip() else '?'}")
    return time.perf_counter() - start


def build_parser() -> Parser:
    parser = Parser(prog="semisup-bench share", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each run (default 40)")
    parser.add_argument("--repeats", type=int, default=2, help="alone-then-pair measurements per variant (medians)")
    parser.add_argument("--compare", action="store_true",
                        help="also measure with spinning OpenMP waits (OMP_WAIT_POLICY=ACTIVE), alternately")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    for key in ("steps", "repeats"):
        if getattr(args, key) < 1:
            raise UsageError(f"--{key}: must be >= 1, got {getattr(args, key)}")
    variants = ["default", "spinning"] if args.compare else ["default"]
    times = {name: dict(alone=[], pair=[]) for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "demo-cache"
        timed_runs(1, 2, work, cache, {})  # builds the demo cache and warms the file cache: not timed
        for _ in range(args.repeats):
            for name in variants:
                times[name]["alone"].append(timed_runs(1, args.steps, work, cache, VARIANTS[name]))
                times[name]["pair"].append(timed_runs(2, args.steps, work, cache, VARIANTS[name]))
    rows = []
    for name in variants:
        alone, pair = statistics.median(times[name]["alone"]), statistics.median(times[name]["pair"])
        rows.append(emit(bench="share", variant=name, env=VARIANTS[name] or "OMP_WAIT_POLICY=PASSIVE (set by the run)",
                         steps=args.steps, alone_s=round(alone, 2), pair_s=round(pair, 2),
                         ratio=round(pair / alone, 2), repeats=args.repeats,
                         all_s={k: [round(v, 2) for v in vs] for k, vs in times[name].items()}))
    if args.out:
        write_json_atomic(args.out, rows)
    return rows
