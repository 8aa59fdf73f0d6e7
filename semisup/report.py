"""Results tables from run directories, in the published layouts.

    python semisup/report.py runs/*  [--out results/]

Limited-label table: Method | Labeled | Start | Top-1 | Top-5 | CH (mean ± std over seeds).
Full-supervision table: Architecture | Method | Top-1 | CH | CGC Loss.
Each run directory needs final.json and config.yaml (written by semisup/run.py). Values are
the final epoch's; the columns marked * are the epoch of best validation top-1 (model_best.pt,
as the released scripts kept), a selection on the validation set, shown beside, never instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import pandas as pd

from semisup.config import Config, load_saved_config
from semisup.errors import UsageError, cli

METHOD_NAMES = {"ce": "Cross-entropy", "ce-script": "Cross-entropy (CGC script, λ 0)", "cgc": "CGC", "gcc": "GCC (L2)"}


def method_key(final: dict) -> str:
    """'ce' for plain cross-entropy, 'ce-script' for the CGC script run at lambda 0 (which still
    forwards the pairs: BatchNorm statistics, and under full supervision three CE terms)."""
    return "ce-script" if final["method"] == "ce" and final.get("ce_baseline") == "lambda0-script" else final["method"]
PUBLISHED_LIMITED = pd.DataFrame([
    dict(Method="Cross-entropy", Labeled="1%", Start="SwAV", **{"Top-1": "54.00", "Top-5": "78.69", "CH": "46.08"}),
    dict(Method="CGC", Labeled="1%", Start="SwAV", **{"Top-1": "55.18", "Top-5": "79.12", "CH": "46.76"}),
])


def load_runs(run_dirs: list[str | Path], settings: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per finished run: its settings (``settings`` adds those config keys as
    columns) and final metrics."""
    unknown = [k for k in settings if k not in Config.__dataclass_fields__]
    if unknown:
        raise UsageError(f"no setting {unknown[0]!r}; settings are the flag names with underscores (see run.py --help)")
    rows = []
    for run_dir in map(Path, run_dirs):
        final_path, config_path = run_dir / "final.json", run_dir / "config.yaml"
        if not final_path.is_file() or not config_path.is_file():
            print(f"skipping {run_dir}: no final.json/config.yaml (unfinished or not a run directory)", file=sys.stderr)
            continue
        final = json.loads(final_path.read_text())
        cfg = load_saved_config(config_path)
        if final.get("truncated"):
            print(f"note: {run_dir} was stopped by --max-steps at step {final.get('steps')} of {final.get('scheduled_steps')}: "
                  "marked 'truncated' in the tables", file=sys.stderr)
        rows.append(dict(run=str(run_dir), method=method_key(final), truncated=bool(final.get("truncated")), labeled_fraction=float(cfg.labeled_fraction),
                         arch=cfg.arch, start=Path(cfg.pretrained).name.split(".")[0] if cfg.pretrained else "scratch",
                         dataset="demo" if cfg.is_demo else Path(cfg.data).name, seed=cfg.seed,
                         **{k: final["final"].get(k) for k in ("top1", "top5", "ch", "ch_strict", "ch_released_swav", "cgc_val_loss", "knn_top1")},
                         **{f"best_{k}": (final.get("best") or {}).get(k) for k in ("epoch", "top1", "top5", "ch")},
                         **{k: getattr(cfg, k) for k in settings}))
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series, digits: int) -> str:
    values = pd.to_numeric(values, errors="coerce")
    if values.notna().any() and not np.isfinite(values.dropna()).all():
        return "non-finite"  # a metric that diverged is reported as such, never as a plain nan
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"  # one seed: no spread to report
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def aggregate(runs: pd.DataFrame, keys: list[str], metrics: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """Mean ± sample std over seeds for each group of ``keys``; column ``Seeds`` counts runs."""
    out = []
    for group, frame in runs.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        row.update({title: _mean_std(frame[col], digits) for title, (col, digits) in metrics.items()})
        truncated = int(frame["truncated"].sum()) if "truncated" in frame else 0
        row["Seeds"] = f"{len(frame)} ({truncated} truncated)" if truncated else len(frame)
        out.append(row)
    return pd.DataFrame(out)


def limited_label_table(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs[runs["labeled_fraction"] < 1.0].copy()
    if runs.empty:
        return pd.DataFrame()
    runs["Labeled"] = runs["labeled_fraction"].map(lambda f: f"{100 * f:g}%")
    table = aggregate(runs, ["dataset", "Labeled", "start", "method"],
                      {"Top-1": ("top1", 2), "Top-5": ("top5", 2), "CH": ("ch", 2), "CH strict": ("ch_strict", 2),
                       "CH rel. SwAV": ("ch_released_swav", 2), "CGC Loss": ("cgc_val_loss", 4), "kNN": ("knn_top1", 2),
                       "Top-1 best*": ("best_top1", 2), "CH best*": ("best_ch", 2)})
    table["method"] = table["method"].map(METHOD_NAMES)
    return table.rename(columns={"dataset": "Dataset", "start": "Start", "method": "Method"})


def full_supervision_table(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs[runs["labeled_fraction"] >= 1.0].copy()
    if runs.empty:
        return pd.DataFrame()
    table = aggregate(runs, ["dataset", "arch", "method"],
                      {"Top-1": ("top1", 2), "CH": ("ch", 2), "CGC Loss": ("cgc_val_loss", 4), "Top-1 best*": ("best_top1", 2)})
    table["method"] = table["method"].map(METHOD_NAMES)
    return table.rename(columns={"dataset": "Dataset", "arch": "Architecture", "method": "Method"})


def ablation_table(runs: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Mean ± std over seeds per labeled fraction, value of ``setting`` and method. Cross-
    entropy rows (which do not depend on the setting) show '–' in its column."""
    runs = runs.copy()
    runs["Labeled"] = runs["labeled_fraction"].map(lambda f: f"{100 * f:g}%")
    runs[setting] = runs[setting].where(~runs["method"].isin(["ce", "ce-script"]))  # NaN: grouped together, shown as '–'
    table = aggregate(runs, ["Labeled", "start", "method", setting],
                      {"Top-1": ("top1", 2), "CH": ("ch", 2), "CH strict": ("ch_strict", 2), "kNN": ("knn_top1", 2)})
    table["method"] = table["method"].map(METHOD_NAMES)
    table[setting] = table[setting].map(lambda v: "–" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v))
    return table.rename(columns={"start": "Start", "method": "Method"})


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", type=Path, help="write results.md, results_*.csv and the plots (tradeoff.png, curves.png, "
                                                   "gallery_*.png) here")
    parser.add_argument("--galleries", action=argparse.BooleanOptionalAction, default=True,
                        help="CE vs CGC galleries from the runs' checkpoints (default: on where they exist)")
    args = parser.parse_args(argv)
    runs = load_runs(args.run_dirs)
    if runs.empty:
        print("no finished runs found", file=sys.stderr)
        return 1
    sections = [("Limited labels", limited_label_table(runs)), ("Full supervision", full_supervision_table(runs))]
    text = []
    for title, table in sections:
        if not table.empty:
            text.append(f"### {title}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n")
    text.append("\\* best: the epoch of highest validation top-1 (model_best.pt), a selection on the validation set; "
                "CH rel. SwAV: the released SwAV-start CH script's figure (layer4 channel = class id; FIDELITY.md).\n")
    text.append(f"### Published (ImageNet, ResNet-50)\n\n{PUBLISHED_LIMITED.to_markdown(index=False, disable_numparse=True)}\n")
    print("\n".join(text))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text("\n".join(text))
        for title, table in sections:
            if not table.empty:
                table.to_csv(args.out / f"results_{title.split()[0].lower()}.csv", index=False)
        runs.to_csv(args.out / "runs.csv", index=False)
        for png in write_pictures(args.run_dirs, args.out, galleries=args.galleries):
            print(f"wrote {png}")
    return 0


def write_pictures(run_dirs: list[str], out: Path, galleries: bool = True) -> list[Path]:
    """The trade-off plot, the training curves and (where checkpoints exist) one CE vs CGC
    gallery per labeled fraction and start, into ``out``."""
    from semisup.plots import curves_plot, tradeoff_plot
    runs = load_runs(run_dirs, settings=("cgc_weight", "temperature"))
    limited = runs[runs["labeled_fraction"] < 1.0]
    written = [tradeoff_plot(runs, out / "tradeoff.png"), curves_plot(runs, out / "curves.png")] if len(limited) or len(runs) else []
    if galleries:
        written += compare_galleries(runs, out)
    return written


def compare_galleries(runs: pd.DataFrame, out: Path, count: int = 8) -> list[Path]:
    """Per (labeled fraction, start): the lowest seed's cross-entropy and CGC runs side by side
    (same validation images), from their checkpoint.pt; skipped where a checkpoint is missing."""
    import torch

    from semisup.gallery import save_gallery
    from semisup.runs import build_data, load_run_model
    written = []
    for (fraction, start), frame in runs.groupby(["labeled_fraction", "start"], sort=True):
        # The cross-entropy control of the same script where there is one (limited labels: the CGC
        # script at lambda 0), else plain cross-entropy.
        baseline = "ce-script" if (frame["method"] == "ce-script").any() else "ce"
        methods = (baseline, "cgc")
        pair = [frame[frame["method"] == m].sort_values("seed") for m in methods]
        if any(p.empty for p in pair):
            continue
        chosen = [Path(p["run"].iloc[0]) for p in pair]
        if not all((d / "checkpoint.pt").is_file() for d in chosen):
            print(f"no gallery for {100 * fraction:g} % from {start}: checkpoint.pt missing in {' or '.join(map(str, chosen))}",
                  file=sys.stderr)
            continue
        models, cfg = [], None
        for run_dir in chosen:
            model, cfg, _ = load_run_model(run_dir / "checkpoint.pt", {})
            models.append(model)
        names = [f"{METHOD_NAMES[m]} (seed {p['seed'].iloc[0]})" for m, p in zip(methods, pair)]
        path = out / f"gallery_frac{fraction:g}_{start}.png"
        written.append(save_gallery(models, names, build_data(cfg), cfg, torch.device("cpu"), path, count=count))
    return written


if __name__ == "__main__":
    sys.exit(main())
