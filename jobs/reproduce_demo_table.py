"""The limited-label (and full-supervision) table on the embedded demo dataset, with galleries.

    python jobs/reproduce_demo_table.py                         # everything: 3 seeds, all rows
    python jobs/reproduce_demo_table.py --rows limited --seeds 0 1 2
    python jobs/reproduce_demo_table.py --rows limited --start swav    # from the demo's SwAV-style pretraining

Runs each row with semisup/run.py (one process per run), then writes results/demo/results.md
(mean ± std over seeds, via semisup/report.py) and results/demo/gallery_ce_vs_cgc.png. Runs
that already finished are reused, so an interrupted reproduction continues where it stopped.
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Per labeled fraction: epochs and milestones that keep each run to a few CPU minutes
# (an epoch is one pass over the labeled set, so it grows with the fraction).
SCHEDULES = {0.01: ["--epochs", "60", "--lr-milestones", "40", "52"],
             0.1: ["--epochs", "6", "--lr-milestones", "4", "5"],
             1.0: ["--epochs", "1", "--lr-milestones"]}
ROWS = {
    "limited": [(f, name, flags) for f in (0.01, 0.1) for name, flags in (("ce", ["--lambda", "0"]), ("cgc", []))],
    "full": [(1.0, name, flags) for name, flags in (("ce", ["--lambda", "0"]), ("gcc", ["--consistency", "l2"]), ("cgc", []))],
}


def run(fraction: float, name: str, flags: list[str], seed: int, out: Path, extra: list[str]) -> Path:
    start = "swav-" if "--pretrained" in extra else ""
    run_dir = out / "runs" / f"{start}{name}-frac{fraction:g}-seed{seed}"
    if (run_dir / "final.json").exists():
        print(f"reusing {run_dir}")
        return run_dir
    cmd = [sys.executable, str(ROOT / "semisup" / "run.py"), "--labeled-fraction", str(fraction), "--seed", str(seed),
           "--run-dir", str(run_dir), "--eval-every", "0", *SCHEDULES[fraction], *flags, *extra]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument("--start", choices=["scratch", "swav"], default="scratch",
                        help="swav: start from the demo's SwAV-style pretraining (run first if pretrained/ lacks it)")
    parser.add_argument("extra", nargs="*", help="more run.py flags, after --")
    args = parser.parse_args(argv)
    if args.start == "swav":
        weights = ROOT / "pretrained" / "demo_swav_resnet_tiny.pth"
        if not weights.exists():
            cache = [x for a, x in zip(args.extra, args.extra[1:]) if a == "--demo-cache"]
            subprocess.run([sys.executable, "-m", "semisup.pretrain", "--out", str(weights), *(["--demo-cache", *cache[:1]] if cache else [])],
                           check=True, cwd=ROOT)
        args.extra += ["--pretrained", str(weights)]
    for rows in args.rows:
        for fraction, name, flags in ROWS[rows]:
            for seed in args.seeds:
                run(fraction, name, flags, seed, args.out, args.extra)
    # The table covers every finished run under out/runs (both starts, all rows run so far).
    report_dirs = sorted(p for p in (args.out / "runs").iterdir() if (p / "final.json").exists())
    subprocess.run([sys.executable, str(ROOT / "semisup" / "report.py"), *map(str, report_dirs), "--out", str(args.out)], check=True)
    ce, cgc = args.out / "runs" / f"ce-frac0.01-seed{args.seeds[0]}", args.out / "runs" / f"cgc-frac0.01-seed{args.seeds[0]}"
    if args.start == "scratch" and (ce / "checkpoint.pt").exists() and (cgc / "checkpoint.pt").exists():
        subprocess.run([sys.executable, str(ROOT / "semisup" / "evaluate.py"), "--checkpoint", str(cgc / "checkpoint.pt"), "--compare",
                        str(ce / "checkpoint.pt"), "--gallery", "16", "--workers", "0", "--out", str(args.out)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
