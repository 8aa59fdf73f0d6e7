"""Pictures of a set of runs, written by ``semisup/report.py --out``: where people would rather
look than read.

- ``tradeoff.png``: Content Heatmap against top-1, one point per run (each seed visible),
  coloured by the CGC weight lambda, marker by method and temperature; cross-entropy runs in black as the
  reference; one panel per labeled fraction and start.
- ``curves.png``: per epoch, training CE, training consistency loss, validation top-1 and CH,
  cross-entropy vs CGC (thin lines: seeds, thick: their mean).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from semisup.errors import printable
from semisup.files import RunFileError, read_csv, write_atomic
from semisup.runfiles import RunFiles

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _panels(runs: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """(labeled fraction, start) groups, in a stable order."""
    return sorted(runs.groupby(["labeled_fraction", "start"], sort=True), key=lambda kv: kv[0])


def _title(key: tuple) -> str:
    fraction, start = key
    return f"{100 * fraction:g} % labels, from {start}"


def tradeoff_plot(runs: pd.DataFrame, path: Path) -> Path:
    """:func:`tradeoff_figure` written to ``path``."""
    return _save(tradeoff_figure(runs), path, dpi=110)


def _save(fig, path: Path, dpi: int) -> Path:
    write_atomic(Path(path), lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    _plt().close(fig)
    return Path(path)


def tradeoff_figure(runs: pd.DataFrame):
    """runs: one row per run with columns labeled_fraction, start, method, seed, top1, ch,
    cgc_weight, temperature (``report.load_runs`` with those settings)."""
    plt = _plt()
    from matplotlib.colors import LogNorm
    panels = _panels(runs)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.4), squeeze=False, layout="constrained")
    consistency = runs[~runs["method"].isin(["ce", "ce-script"])]
    weights = consistency["cgc_weight"][consistency["cgc_weight"] > 0]
    norm = LogNorm(weights.min(), max(weights.max(), weights.min() * 1.01)) if len(weights) else None
    several_weights = weights.nunique() > 1  # a colour scale only says something when lambda varies
    scatter = None
    for ax, (key, frame) in zip(axes[0], panels):
        ce = frame[frame["method"].isin(["ce", "ce-script"])]
        ax.scatter(ce["top1"], ce["ch"], color="black", marker="x", s=50, label="cross-entropy (λ 0)", zorder=3)
        if len(ce):
            ax.axhline(ce["ch"].mean(), color="black", lw=0.8, ls=":")
            ax.axvline(ce["top1"].mean(), color="black", lw=0.8, ls=":")
        cgc = frame[~frame["method"].isin(["ce", "ce-script"])]
        for n, ((method, temperature), part) in enumerate(cgc.groupby(["method", "temperature"], sort=True)):
            if len(part):
                single = "" if several_weights else f", λ {part['cgc_weight'].iloc[0]:g}"
                scatter = ax.scatter(
                    part["top1"], part["ch"], c=part["cgc_weight"] if several_weights else "tab:red",
                    cmap="viridis" if several_weights else None, norm=norm if several_weights else None,
                    marker=MARKERS[n % len(MARKERS)], s=45, edgecolor="black", linewidth=0.4,
                    label=f"{method.upper()}, T {temperature:g}{single}", zorder=2,
                )
        for _, run in frame.iterrows():  # each seed visible
            ax.annotate(
                f"s{run['seed']}", (run["top1"], run["ch"]), fontsize=6, xytext=(3, 2), textcoords="offset points",
                color="dimgray",
            )
        ax.set_title(_title(key), fontsize=10)
        ax.set_xlabel("validation top-1 (%)")
        ax.set_ylabel("Content Heatmap (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if scatter is not None and several_weights:
        fig.colorbar(scatter, ax=axes, shrink=0.8, label="λ (CGC weight)")
    fig.suptitle("CH vs top-1: each point a run (s = seed); dotted: cross-entropy mean", fontsize=10)
    return fig


CURVES = [("train_ce", "training cross-entropy"), ("train_consistency", "training consistency loss"),
          ("top1", "validation top-1 (%)"), ("ch", "Content Heatmap (%)")]


def curves_plot(runs: pd.DataFrame, path: Path) -> Path:
    """:func:`curves_figure` written to ``path``."""
    return _save(curves_figure(runs), path, dpi=100)


def curves_figure(runs: pd.DataFrame):
    """runs: rows with a 'run' directory (holding metrics.csv), method, labeled_fraction, start.
    One row of four panels per (labeled fraction, start); CE and CGC-type runs in two colours."""
    plt = _plt()
    panels = _panels(runs)
    fig, axes = plt.subplots(
        len(panels), len(CURVES), figsize=(4.0 * len(CURVES), 3.0 * len(panels)), squeeze=False, layout="constrained"
    )
    colours = {"ce": "tab:gray", "ce-script": "black", "cgc": "tab:red", "gcc": "tab:blue"}
    for row, (key, frame) in enumerate(panels):
        for method, group in frame.groupby("method"):
            histories = []
            for run_dir in group["run"]:
                metrics = RunFiles(run_dir).metrics
                try:
                    history = read_csv(metrics) if metrics.is_file() else pd.DataFrame()
                except RunFileError as err:
                    print(f"note: {printable(str(err))}: left out of the curves", file=sys.stderr)
                    continue
                if "epoch" in history:  # epochs in order, each once (a resumed run rewrote its last epoch)
                    histories.append(history.drop_duplicates("epoch", keep="last").set_index("epoch").sort_index())
            for col, (metric, label) in enumerate(CURVES):
                ax = axes[row, col]
                if metric == "train_consistency" and method in ("ce", "ce-script"):
                    continue  # cross-entropy trains no consistency loss: no flat zero line
                series = [h[metric].dropna() for h in histories if metric in h and h[metric].notna().any()]
                for s in series:
                    ax.plot(s.index, s.values, color=colours.get(method, "tab:green"), alpha=0.3, lw=0.8,
                            marker="o" if len(s) < 3 else None, ms=3)
                if series:
                    mean = pd.concat(series, axis=1).mean(axis=1)
                    ax.plot(mean.index, mean.values, color=colours.get(method, "tab:green"), lw=2,
                            marker="o" if len(mean) < 3 else None, label=f"{method} ({len(series)} seeds)")
                ax.set_title(f"{label}\n{_title(key)}", fontsize=8)
                ax.set_xlabel("epoch", fontsize=8)
                ax.grid(alpha=0.3)
        for ax in axes[row]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.suptitle("Training curves: thin lines are seeds, thick their mean (CH where it was evaluated)", fontsize=10)
    return fig
