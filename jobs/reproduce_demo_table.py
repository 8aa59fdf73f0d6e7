"""The limited-label (and full-supervision) table on the embedded demo dataset, with galleries.

    python jobs/reproduce_demo_table.py                         # everything: 3 seeds, all rows
    python jobs/reproduce_demo_table.py --rows limited --fractions 0.1 --seeds 3 4 5   # more seeds for one row
    python jobs/reproduce_demo_table.py --rows limited --starts shipped  # only from the shipped SwAV-style start
    python jobs/reproduce_demo_table.py --ablations lambda --seeds 0 1 2  # one setting varied, table per ablation

Runs each row with semisup/run.py (one process per run), from both starts (the shipped
SwAV-style weights, run names prefixed 'swav-', and random initialisation), then writes
results/demo/results.md (mean ± std over seeds) and the pictures (tradeoff.png, curves.png,
gallery_*.png: CE vs CGC on the same validation images) via semisup/report.py. Runs
that already finished with the same settings are reused, so an interrupted reproduction
continues where it stopped; one that finished with other settings (a default or the demo
dataset's version changed since) stops the script unless --rerun-stale is given.
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import semisup  # noqa: F401 (the installed package: `pip install -e .` in the checkout)
except ModuleNotFoundError:
    sys.exit("semisup is not installed in this Python: run `pip install -e .` in the checkout")

from semisup.config import differing_keys, load_saved_config, parse_config  # noqa: E402
from semisup.files import write_text_atomic  # noqa: E402

# Each fraction's schedule (epochs, milestones) is the demo's own (semisup.config.DEMO_SCHEDULES):
# `run.py --labeled-fraction 0.1` on the demo is this table's 10 % run.
# Full supervision uses lambda 0.05, half the demo default: there the pair is formed on every
# labeled image, and 0.1 cost 9 top-1 (the pre-fidelity lambda ablation's 100 % rows). GCC
# takes the released script's lambda (1000, --consistency l2 without --lambda).
FULL_LAMBDA = ["--lambda", "0.05"]
ROWS = {
    "limited": [(f, name, flags) for f in (0.01, 0.1) for name, flags in (("ce", ["--lambda", "0"]), ("cgc", []))],
    # Full supervision as released: CGC and GCC sum three CE terms (crop, view, augmented view);
    # the released CE row (baseline_train_eval.py) has one; "ce-script" is the CGC script at
    # lambda 0 (the three CE terms, no consistency), the control that isolates the consistency.
    "full": [
        (1.0, name, flags)
        for name, flags in (
            ("ce", ["--lambda", "0"]),
            ("ce-script", ["--lambda", "0", "--ce-baseline", "lambda0-script"]),
            ("gcc", ["--consistency", "l2"]),
            ("cgc", FULL_LAMBDA),
        )
    ],
}


# Ablations: one setting varied around the demo defaults, CGC at 10 % labels (where the
# published lambda cost the most top-1), per labeled fraction the values tried. The run
# with the default value is the main table's CGC run; cross-entropy runs of the same seeds
# are the reference.
ABLATIONS = {
    "lambda": ("cgc_weight", {0.01: [0.1, 0.25], 0.1: [0.05, 0.1, 0.25, 0.5], 1.0: [0.05, 0.1, 0.25]}),
    "temperature": ("temperature", {0.1: [0.1, 0.2, 0.5, 1.0]}),
    "crop_scale": ("crop_scale_min", {0.1: [0.08, 0.25, 0.5]}),
    "negatives": ("batch_unlabeled", {0.1: [16, 64, 128]}),
    "cam_class": ("cam_class", {0.01: ["predicted", "label"], 0.1: ["predicted", "label"]}),
    "warmup": ("cgc_warmup_epochs", {0.1: [0.0, 2.0, 4.0]}),
    # The released flip draw (a quarter of the pairs against a mirrored target) vs the consistent one.
    "flip": ("flip_protocol", {0.1: ["released", "consistent"]}),
    # BatchNorm over the released replicas vs over the whole batch. The demo's step holds one
    # replica (64 unlabeled images), where both are the same computation: these runs take the
    # released shape, 128 unlabeled images a step = two replicas of 64 (ABLATION_FLAGS).
    "bn": ("bn_geometry", {0.1: ["replicas", "batch"]}),
}
# Flags every run of an ablation takes; its runs then all have their own folders (the main table's
# runs do not have these flags).
ABLATION_FLAGS = {"bn": ["--batch-unlabeled", "128"]}


# Per labeled fraction: how often top-1 and CH are evaluated, for the training curves (the
# demo's validation split is small: an evaluation costs seconds).
EVALUATIONS = {0.01: ["--eval-every", "10", "--ch-every", "10"], 0.1: ["--eval-every", "1", "--ch-every", "2"],
               1.0: ["--eval-every", "1", "--ch-every", "1"]}
# The two starts of the demo tables: the shipped SwAV-style weights (the demo default, as the
# published pipeline starts from SwAV), and random initialisation.
STARTS = {"shipped": [], "scratch": ["--pretrained", "none"]}


def start_prefix(extra: list[str]) -> str:
    """Run names from the shipped SwAV-style start carry a 'swav-' prefix."""
    return "" if "--pretrained" in extra and extra[extra.index("--pretrained") + 1] == "none" else "swav-"


def run(
    fraction: float, name: str, flags: list[str], seed: int, out: Path, extra: list[str], run_dir: Path | None = None,
    rerun_stale: bool = False,
) -> Path:
    run_dir = run_dir or out / "runs" / f"{start_prefix(extra)}{name}-frac{fraction:g}-seed{seed}"
    args = ["--labeled-fraction", str(fraction), "--seed", str(seed), "--run-dir", str(run_dir), *EVALUATIONS[fraction],
            *flags, *extra]
    if (run_dir / "final.json").exists():
        stale = differing_keys(load_saved_config(run_dir / "config.yaml"), parse_config(args))
        if not stale:
            print(f"reusing {run_dir}")
            return run_dir
        if not rerun_stale:
            raise SystemExit(f"{run_dir} finished with other settings ({', '.join(stale)}) than this command asks for, "
                             "e.g. after a default changed; pass --rerun-stale to replace it, or --out elsewhere")
        args.append("--overwrite")
    cmd = [sys.executable, str(ROOT / "semisup" / "run.py"), *args]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run_dir


def run_ablation(name: str, seeds: list[int], out: Path, extra: list[str], rerun_stale: bool) -> None:
    """Run one ablation grid (plus its references) and write out/ablations/<name>.md."""
    setting, grid = ABLATIONS[name]
    flag = "--" + setting.replace("_", "-")
    start = start_prefix(extra)
    for fraction, values in grid.items():
        # The value the main table's CGC row at this fraction runs with (its own flag, else the preset's).
        row_flags = next(flags for f, n, flags in ROWS["limited"] + ROWS["full"] if f == fraction and n == "cgc")
        default = getattr(parse_config(row_flags), setting)
        fixed = ABLATION_FLAGS.get(name, [])
        for seed in seeds:
            run(fraction, "ce", ["--lambda", "0"], seed, out, extra, rerun_stale=rerun_stale)
            for value in values:
                label = f"{value:g}" if isinstance(value, float | int) else f"-{value}"
                # The default value's run is the main table's CGC run (run() names it), unless the
                # ablation's own flags make every run its own.
                own = (None if value == default and not fixed
                       else out / "ablations" / f"{start}{name}{label}-frac{fraction:g}-seed{seed}")
                run(fraction, "cgc", [flag, str(value), *fixed], seed, out, extra, own, rerun_stale)
    # The table holds every finished run of this ablation and the main CE / CGC runs at its
    # fractions, whatever seeds they have (Seeds says how many), not just this call's.
    dirs = [
        d
        for fraction in grid
        for pattern in (
            f"ablations/{start}{name}*-frac{fraction:g}-seed*", f"runs/{start}ce-frac{fraction:g}-seed*",
            f"runs/{start}cgc-frac{fraction:g}-seed*",
        )
        for d in sorted(out.glob(pattern))
        if (d / "final.json").exists()
    ]
    from semisup.tools.report import ablation_table, load_runs
    table = ablation_table(load_runs(dirs, settings=(setting,)), setting)
    text = f"### Ablation: {name} (`{flag}`)\n\n{table.to_markdown(index=False, disable_numparse=True)}\n"
    print(text)
    (out / "ablations").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "ablations" / f"{name}.md", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=sorted(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument(
        "--starts", nargs="+", choices=sorted(STARTS), default=["scratch", "shipped"],
        help="shipped: the demo's SwAV-style weights in pretrained/ (the demo default); scratch: --pretrained none",
    )
    parser.add_argument(
        "--fractions", nargs="+", type=float, help="run only the rows of these labeled fractions (e.g. 0.1)"
    )
    parser.add_argument("--ablations", nargs="+", choices=sorted(ABLATIONS),
                        help="run these ablations (see ABLATIONS) instead of the table; --seeds applies")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="replace finished runs whose settings differ from what this command asks for")
    parser.add_argument("extra", nargs="*", help="more run.py flags, after --")
    args = parser.parse_args(argv)
    if args.ablations:
        for name in args.ablations:
            run_ablation(name, args.seeds, args.out, args.extra + STARTS[args.starts[0]], args.rerun_stale)
        return 0
    for start in args.starts:
        for rows in args.rows:
            for fraction, name, flags in ROWS[rows]:
                if args.fractions and fraction not in args.fractions:
                    continue
                for seed in args.seeds:
                    run(fraction, name, flags, seed, args.out, args.extra + STARTS[start], rerun_stale=args.rerun_stale)
    # The table covers every finished run under out/runs (both starts, all rows run so far).
    report_dirs = sorted(p for p in (args.out / "runs").iterdir() if (p / "final.json").exists())
    subprocess.run(
        [sys.executable, str(ROOT / "semisup" / "report.py"), *map(str, report_dirs), "--out", str(args.out)],
        check=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
