"""Results tables from run directories, in the published layouts.

    python semisup/report.py runs/*  [--out reports/]

Limited-label table: Method | Labeled | Start | Top-1 | Top-5 | CH (mean ± std over seeds).
Full-supervision table: Architecture | Method | Top-1 | CH | CGC Loss.
Each run directory needs final.json and config.yaml (written by semisup/run.py). Values are
the final epoch's; the columns marked * are the epoch of best validation top-1 (model_best.pt,
as the released scripts kept), a selection on the validation set, shown beside, never instead.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from semisup import registry
from semisup.config import Config, load_saved_config, settings_unknown_here
from semisup.errors import Parser, UsageError, UserError, cli, printable
from semisup.eval.metrics import not_meaningful
from semisup.files import RunFileError, parse_json, read_json, read_text, write_atomic, write_text_atomic
from semisup.registry import ABLATION, EVALUATE_ONLY, FULL_SUPERVISION, LIMITED, METRICS
from semisup.runfiles import RunFiles

METHOD_NAMES = {"ce": "Cross-entropy", "ce-script": "Cross-entropy (CGC script, λ 0)", "cgc": "CGC", "gcc": "GCC (L2)"}


def say(text: str) -> None:
    """A note on stderr; its run folders' names and files' text came from someone else's files,
    so control characters are escaped."""
    print(printable(text), file=sys.stderr)


def method_key(final: dict) -> str:
    """'ce' for plain cross-entropy, 'ce-script' for the CGC script run at lambda 0 (which still
    forwards the pairs: BatchNorm statistics, and under full supervision three CE terms)."""
    return "ce-script" if final["method"] == "ce" and final.get("ce_baseline") == "lambda0-script" else final["method"]
PUBLISHED_LIMITED = pd.DataFrame([
    dict(Method="Cross-entropy", Labeled="1%", Start="SwAV", **{"Top-1": "54.00", "Top-5": "78.69", "CH": "46.08"}),
    dict(Method="CGC", Labeled="1%", Start="SwAV", **{"Top-1": "55.18", "Top-5": "79.12", "CH": "46.76"}),
])


# Settings that do not change a run's results (or are shown in their own column): two runs that
# differ only in these are seeds of one row. Every other setting splits the rows.
NOT_RESULT_SETTINGS = {
    "seed", "run_dir", "splits_dir", "workers", "decode", "overwrite", "dry_run", "checkpoint_every", "log_every",
    "gallery", "device", "demo_cache", "compile", "max_bad_fraction", "recipe", "ch_every", "data", "pretrained",
    "val_cache", "threads",
}
# Loss settings that a cross-entropy run (lambda 0) never uses.
LOSS_ONLY_SETTINGS = {
    "temperature", "consistency", "group_size", "cgc_negatives", "cam_size", "cam_class", "cgc_warmup_epochs",
}


def _signature(values: dict, method: str) -> str:
    """The settings that change what a run computes, except the seed, as a sortable string."""
    drop = NOT_RESULT_SETTINGS | (LOSS_ONLY_SETTINGS if method in ("ce", "ce-script") else set())
    return json.dumps({k: v for k, v in sorted(values.items()) if k not in drop}, default=str)


def _read_run(run_dir: Path) -> tuple[dict, Config] | None:
    """(final.json, config) of a finished run, or None (said on stderr) for anything else."""
    final_path, config_path = RunFiles(run_dir).final, RunFiles(run_dir).config
    if not final_path.is_file() or not config_path.is_file():
        say(f"skipping {run_dir}: no final.json/config.yaml (unfinished or not a run directory)")
        return None
    try:
        final = read_json(final_path)
        if not isinstance(final.get("final"), dict) or "method" not in final:
            raise RunFileError(f"{final_path}: not a final.json written by semisup/run.py (no 'method' and 'final')")
        return final, load_saved_config(config_path)
    except UserError as err:
        say(f"skipping {run_dir}: {err}")
        return None


def evaluated_later(run_dir: Path, final: dict) -> dict:
    """Metrics ``semisup/evaluate.py`` appended to the run's eval.jsonl for the run's own final
    weights: those only it computes (insertion / deletion AUC) and every reported metric the run's
    own final.json lacks (a plugin's metric evaluated after the run, a metric of a newer version):
    the latest of each, with the number of images it was computed on. A row of other weights
    (another run's checkpoint evaluated with --out into this folder) or without a digest (older
    evaluations) is left out."""
    found = {}
    own = final.get("final") if isinstance(final.get("final"), dict) else {}
    later = evaluate_only_names() + [k for k in run_metric_names() if own.get(k) is None]
    path = RunFiles(run_dir).eval
    if not path.is_file():
        return found
    try:
        lines = read_text(path).splitlines()
    except (OSError, UnicodeDecodeError, RunFileError) as err:
        detail = str(err) if isinstance(err, RunFileError) else f"{path} is unreadable"
        say(f"note: {detail}; its metrics are left out")
        return found
    others = 0
    for line in lines:
        try:
            row = parse_json(line)
        except ValueError:
            continue  # a line cut by a kill: the others still count
        if not isinstance(row, dict) or not any(isinstance(row.get(k), (int, float)) for k in later):
            continue
        if not _of_the_final_weights(row, final):
            others += 1
            continue
        for key in later:
            if isinstance(row.get(key), (int, float)):
                found.update({key: row[key], f"{key}_images": row.get("images"), f"{key}_of": row.get("validation")})
    if others:
        columns = "/".join(METRICS.get(k).column or k for k in later)
        say(f"note: {path}: {others} evaluation(s) of other weights than the run's final ones (or without their "
              f"digest) left out of its {columns}")
    return found


def labeled_share(cfg: Config, final: dict) -> float:
    """The share of the training images the run had labels for: counted where a --split-file chose
    them (its lines, not --labeled-fraction, decide), else --labeled-fraction."""
    labeled, total = final.get("labeled_images"), final.get("train_images")
    if cfg.split_file and isinstance(labeled, int) and isinstance(total, int) and total > 0:
        return labeled / total
    return float(cfg.labeled_fraction)


def percent(share: float) -> str:
    """0.01 -> "1%"; 12811 / 1281167 -> "1%"; 0.125 -> "12.5%"."""
    return f"{100 * share:.3g}%"


def load_runs(run_dirs: list[str | Path], settings: tuple[str, ...] = (), quiet: bool = False) -> pd.DataFrame:
    """One row per finished run and seed: its settings (``settings`` adds those config keys as
    columns; ``signature`` holds all that change results) and final metrics. A rerun of the
    same seed with the same settings is not a second seed: the newest finished one is kept."""
    unknown = [k for k in settings if k not in Config.__dataclass_fields__]
    if unknown:
        raise UsageError(f"no setting {unknown[0]!r}; settings are the flag names with underscores (see run.py --help)")
    rows = []
    for run_dir in map(Path, run_dirs):
        read = _read_run(run_dir)
        if read is None:
            continue
        final, cfg = read
        unknown = settings_unknown_here(RunFiles(run_dir).config)
        if unknown and not quiet:
            say(f"note: {run_dir} has settings this version does not know ({', '.join(sorted(map(str, unknown)))}): "
                "they tell its rows apart; a newer version of the package reads them")
        note = registry.not_loaded_note(cfg.plugins, str(run_dir))
        if note and not quiet:
            say(f"note: {note} (its plugin metrics are left out)")
        if final.get("truncated") and not quiet:
            say(
                f"note: {run_dir} was stopped by --max-steps at step {final.get('steps')} of"
                f" {final.get('scheduled_steps')}: marked 'truncated' in the tables")
        method = method_key(final)
        rows.append(
            dict(
                run=str(run_dir),
                method=method,
                truncated=bool(final.get("truncated")),
                labeled_fraction=float(cfg.labeled_fraction),
                labeled_share=labeled_share(cfg, final),
                arch=cfg.arch,
                classes=final.get("classes"),  # older runs: unknown
                box_images=(final.get("final") or {}).get("ch_images"),  # 0: no validation image had a box
                start=Path(cfg.pretrained).name.split(".")[0] if cfg.pretrained else "scratch",
                dataset="demo" if cfg.is_demo else Path(cfg.data).name,
                # The dataset's identity: its files' digest (older runs: the folder's full path).
                dataset_id=final.get("dataset_digest") or ("demo" if cfg.is_demo else str(Path(cfg.data).resolve())),
                # The start's identity: its trunk's digest (older runs: the file's full path).
                start_id=final.get("pretrained_sha256") or (str(Path(cfg.pretrained).resolve()) if cfg.pretrained
                                                            else "scratch"),
                seed=cfg.seed,
                max_eval_images=cfg.max_eval_images,
                signature=_signature({**cfg.to_dict(), **unknown}, method),
                finished=(RunFiles(run_dir).final).stat().st_mtime,
                **{k: final["final"].get(k) for k in run_metric_names()}
                | {k: None for k in evaluate_only_names()} | evaluated_later(run_dir, final),
                **{f"best_{k}": (final.get("best") or {}).get(k) for k in ("epoch", *best_metric_names())},
                **{k: getattr(cfg, k) for k in settings},
            )
        )
    runs = pd.DataFrame(rows)
    if runs.empty:
        return runs
    runs = tell_datasets_apart(runs)
    runs = runs.sort_values("finished")
    repeats = runs.duplicated(["dataset", "start", "signature", "seed"], keep="last")
    for _, rerun in runs[repeats].iterrows():
        if not quiet:
            kept = runs[~repeats & (runs["signature"] == rerun["signature"]) & (runs["seed"] == rerun["seed"])
                        & (runs["start"] == rerun["start"]) & (runs["dataset"] == rerun["dataset"])]["run"].iloc[0]
            say(
                f"note: {rerun['run']} and {kept} are the same settings and seed {rerun['seed']}: one seed, the newer"
                f" ({kept}) is counted")
    return runs[~repeats].sort_values("run").reset_index(drop=True)


def _of_the_final_weights(row: dict, final: dict) -> bool:
    """Whether an evaluate.py row scored the run's final weights: by their digest, or for rows and
    runs older than the digest, by the checkpoint's file name."""
    if row.get("weights_sha256") and final.get("weights_sha256"):
        return row["weights_sha256"] == final["weights_sha256"]
    return Path(str(row.get("checkpoint", ""))).name == RunFiles.CHECKPOINT


def tell_datasets_apart(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of different datasets whose folders share a name (two "imagenet"s), or of different
    starts whose files share one, are never seeds of one row: such names get the digest, e.g.
    ``imagenet [3fa2c1e0]``."""
    runs = runs.copy()
    for column, identity in (("dataset", "dataset_id"), ("start", "start_id")):  # two starts named resnet50.pth too
        for name, frame in runs.groupby(column):
            if frame[identity].nunique() > 1:
                runs.loc[frame.index, column] = [_identity_label(name, str(i)) for i in frame[identity]]
    return runs


def _identity_label(name: str, identity: str) -> str:
    """``resnet50 [3fa2c1e0]`` for a digest; an older run recorded only the path, which proves no
    identity with a digested one: ``resnet50 [path /w/resnet50.pth, older run]``."""
    if re.fullmatch(r"[0-9a-f]{8,}", identity):
        return f"{name} [{identity[-8:]}]"
    return f"{name} [path {identity}, older run]" if identity.startswith("/") else f"{name} [{identity}]"


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


def _setting_label(key: str, value) -> str:
    from semisup.config import canonical_key, flag_spellings
    name = flag_spellings(key)[0].lstrip("-") if canonical_key(key) else key  # a setting of a newer version: as saved
    shown = "none" if value is None else " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return f"{name} {shown}"


def settings_column(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """For rows that share ``keys`` (dataset, labeled, start, method), the settings that tell
    them apart, e.g. 'lambda 0.1, epochs 60' ('' where a row has no such neighbour)."""
    labels = [""] * len(table)
    for _, frame in table.groupby(keys, sort=False, dropna=False):
        if len(frame) < 2:
            continue
        parsed = [json.loads(sig) for sig in frame["signature"]]
        varying = sorted(k for k in set().union(*parsed) if len({json.dumps(p.get(k)) for p in parsed}) > 1)
        for position, values in zip(frame.index, parsed):
            labels[table.index.get_loc(position)] = ", ".join(_setting_label(k, values.get(k)) for k in varying)
    return labels


def aggregate(runs: pd.DataFrame, keys: list[str], metrics: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """Mean ± sample std over seeds for each group of ``keys`` and identical result-changing
    settings (``signature``); ``Seeds`` counts distinct seeds and marks truncated runs and runs
    evaluated on a subset; ``Settings`` (shown when needed) says what splits rows that share ``keys``."""
    out = []
    for group, frame in runs.groupby(keys + ["signature"], sort=True, dropna=False):
        row = dict(zip(keys + ["signature"], group))
        row.update({title: _mean_std(frame[col], digits) for title, (col, digits) in metrics.items()})
        notes = []
        if "truncated" in frame and frame["truncated"].any():
            notes.append(f"{int(frame['truncated'].sum())} truncated")
        if "max_eval_images" in frame and frame["max_eval_images"].notna().any():
            notes.append(f"evaluated on ≤ {int(frame['max_eval_images'].max())} val images")
        for key in [c[:-len("_images")] for c in frame if c.endswith("_images") and f"{c[:-7]}_of" in frame]:
            images, total = frame[f"{key}_images"].dropna(), frame[f"{key}_of"].dropna()
            if len(images) and len(total) and (images < total.max()).any():  # computed on part of the set: said
                column = METRICS.get(key).column if key in METRICS else key
                notes.append(f"{column} on {int(images.min())} of {int(total.max())} val images")
        seeds = frame["seed"].nunique() if "seed" in frame else len(frame)
        row["Seeds"] = f"{seeds} ({'; '.join(notes)})" if notes else seeds
        out.append(row)
    table = pd.DataFrame(out)
    labels = settings_column(table, keys)
    if any(labels):
        table.insert(len(keys), "Settings", labels)
    return table.drop(columns="signature")


def run_metric_names() -> list[str]:
    """The reported metrics a run's own evaluation writes to final.json (top1 ... knn_top1, the
    heatmap metrics)."""
    return [m.name for m in METRICS.in_order() if m.column and m.cadence != EVALUATE_ONLY]


def best_metric_names() -> list[str]:
    """The metrics read from final.json's best checkpoint: the headline ones and those with a best* column."""
    return list(dict.fromkeys([*METRICS.headline(), *(m.name for m in METRICS.in_order() if m.best_in)]))


def evaluate_only_names() -> list[str]:
    """The reported metrics only semisup/evaluate.py computes, read from the run's eval.jsonl (iauc, dauc)."""
    return [m.name for m in METRICS.in_order() if m.column and m.cadence == EVALUATE_ONLY]


def columns(table: str) -> dict[str, tuple[str, int]]:
    """{column: (runs' key, decimals)} of a report table, from the metrics' declarations: each
    metric's column in declaration order, then the best checkpoint's columns (``<column> best*``)."""
    metrics = METRICS.reported(table)
    return {**{m.column: (m.name, m.decimals) for m in metrics},
            **{f"{m.column} best*": (f"best_{m.name}", m.decimals) for m in metrics if table in m.best_in}}


def _drop_meaningless(table: pd.DataFrame, runs: pd.DataFrame, which: str) -> pd.DataFrame:
    """Columns of optional metrics no run has (IAUC never evaluated), of the box metrics where no
    run of the table had a validation box (its own data without --val-boxes), and of metrics that
    mean nothing for every run of it (``metrics.not_meaningful``: top-5 of 5 classes or fewer, CH
    rel. SwAV off a ResNet). Other metrics a run lacks stay, shown '–'."""
    classes = runs["classes"] if "classes" in runs else pd.Series([None] * len(runs), index=runs.index)
    reasons = [set(not_meaningful(None if pd.isna(c) else int(c), arch)) for c, arch in zip(classes, runs["arch"])]
    meaningless = set.intersection(*reasons) if reasons else set()
    if "box_images" in runs and (runs["box_images"].fillna(-1) == 0).all():  # older runs: unknown, kept
        meaningless |= {m.name for m in METRICS.in_order() if m.evaluation_pass == "ch"}
    drop = []
    for m in METRICS.reported(which):
        empty = (table[m.column] == "–").all() if m.column in table else False
        if m.name in meaningless or (m.optional and empty):
            drop += [c for c in (m.column, f"{m.column} best*") if c in table]
    return table.drop(columns=drop)


def limited_label_table(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs[runs["labeled_fraction"] < 1.0].copy()
    if runs.empty:
        return pd.DataFrame()
    runs["Labeled"] = runs["labeled_share"].map(percent)
    table = aggregate(runs, ["dataset", "Labeled", "start", "method"], columns(LIMITED))
    table = _drop_meaningless(table, runs, LIMITED)
    table["method"] = table["method"].map(METHOD_NAMES)
    return table.rename(columns={"dataset": "Dataset", "start": "Start", "method": "Method"})


def full_supervision_table(runs: pd.DataFrame) -> pd.DataFrame:
    runs = runs[runs["labeled_fraction"] >= 1.0].copy()
    if runs.empty:
        return pd.DataFrame()
    table = aggregate(runs, ["dataset", "arch", "method"], columns(FULL_SUPERVISION))
    table = _drop_meaningless(table, runs, FULL_SUPERVISION)
    table["method"] = table["method"].map(METHOD_NAMES)
    return table.rename(columns={"dataset": "Dataset", "arch": "Architecture", "method": "Method"})


def ablation_table(runs: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Mean ± std over seeds per labeled fraction, value of ``setting`` and method. Cross-
    entropy rows (which do not depend on the setting) show '–' in its column."""
    runs = runs.copy()
    runs["Labeled"] = runs["labeled_share"].map(percent)
    runs[setting] = runs[setting].where(
        ~runs["method"].isin(["ce", "ce-script"])
    )  # NaN: grouped together, shown as '–'
    runs[setting] = runs[setting].map(lambda v: tuple(v) if isinstance(v, list) else v)  # hashable for grouping
    table = aggregate(runs, ["Labeled", "start", "method", setting], columns(ABLATION))
    table["method"] = table["method"].map(METHOD_NAMES)
    table[setting] = table[setting].map(lambda v: "–" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v))
    return table.rename(columns={"start": "Start", "method": "Method"})


@cli
def main(argv=None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument(
        "--out", type=Path,
        help="write results.md, results_*.csv and the plots (tradeoff.png, curves.png, gallery_*.png) here",
    )
    parser.add_argument("--galleries", action=argparse.BooleanOptionalAction, default=True,
                        help="CE vs CGC galleries from the runs' checkpoints (default: on where they exist)")
    parser.add_argument(
        "--class-names",
        type=Path,
        help=(
            "'<class folder> <name>' lines (e.g. ImageNet's LOC_synset_mapping.txt): "
            "gallery titles show names instead of wnids"
        ),
    )
    parser.add_argument(
        "--plugins",
        help=("comma-separated plugin modules to import (their metrics become columns); the modules a run's "
              "config.yaml names are never imported from it: name them here if you trust them"),
    )
    args = parser.parse_args(argv)
    registry.load_plugins(registry.split_modules(args.plugins))
    class_names = read_class_names(args.class_names) if args.class_names else None
    runs = load_runs(args.run_dirs)
    if runs.empty:
        raise UserError(
            f"no finished runs among the {len(args.run_dirs)} folder(s) given (a run directory holds final.json and "
            "config.yaml; the lines above say why each was skipped)"
        )
    sections = [("Limited labels", limited_label_table(runs)), ("Full supervision", full_supervision_table(runs))]
    text = []
    for title, table in sections:
        if not table.empty:
            text.append(f"### {title}\n\n{table.to_markdown(index=False, disable_numparse=True)}\n")
    text.append("\\* best: the epoch of highest validation top-1 (model_best.pt), a selection on the validation set; "
                "CH rel. SwAV: the released SwAV-start CH script's figure (layer4 channel = class id; FIDELITY.md). "
                "Box metrics where no run of a table had validation boxes, and metrics that mean nothing "
                "for all of its runs (top-5 of 5 classes or fewer, CH rel. SwAV off a ResNet), have no column.\n")
    text.append(
        f"### Published (ImageNet, ResNet-50)\n\n{PUBLISHED_LIMITED.to_markdown(index=False, disable_numparse=True)}\n"
    )
    print("\n".join(printable(line) for line in "\n".join(text).splitlines()))  # names from the runs' files
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "results.md", "\n".join(text))
        for title, table in sections:
            if not table.empty:
                csv = args.out / f"results_{title.split()[0].lower()}.csv"
                write_atomic(csv, lambda tmp, table=table: table.to_csv(tmp, index=False))
        write_atomic(args.out / "runs.csv", lambda tmp: runs.to_csv(tmp, index=False))
        for png in write_pictures(args.run_dirs, args.out, galleries=args.galleries, class_names=class_names):
            print(f"wrote {png}")
    return 0


def read_class_names(path: Path) -> dict[str, str]:
    """{class folder name: readable name} from lines '<wnid> <name ...>' (ImageNet's
    LOC_synset_mapping.txt: 'n01440764 tench, Tinca tinca'; the first name is used)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(
            f"--class-names {path}: unreadable ({type(err).__name__}); expected '<class folder> <name>' lines"
        ) from err
    names = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise UsageError(f"--class-names {path}:{n}: expected '<class folder> <name>', got {line.strip()!r}")
        names[parts[0]] = parts[1].split(",")[0].strip()
    return names


def write_pictures(
    run_dirs: list[str], out: Path, galleries: bool = True, class_names: dict[str, str] | None = None
) -> list[Path]:
    """The trade-off plot, the training curves and (where checkpoints exist) one CE vs CGC
    gallery per labeled fraction, start and CGC setting, into ``out``."""
    from semisup.tools.plots import curves_plot, tradeoff_plot
    runs = load_runs(run_dirs, settings=("cgc_weight", "temperature"), quiet=True)
    written = [curves_plot(runs, out / "curves.png")] if len(runs) else []
    with_ch = runs[runs["ch"].notna()] if len(runs) else runs  # CH needs boxes: a dataset without them has no trade-off
    if len(with_ch):
        written.insert(0, tradeoff_plot(with_ch, out / "tradeoff.png"))
    if galleries:
        written += compare_galleries(runs, out, class_names=class_names)
    return written


def compare_galleries(
    runs: pd.DataFrame, out: Path, count: int = 8, class_names: dict[str, str] | None = None
) -> list[Path]:
    """Per (labeled fraction, start) and per distinct CGC setting: the lowest seed's cross-entropy
    and CGC runs side by side (same validation images), from their checkpoint.pt, each labelled
    with the settings that tell it apart; skipped where a checkpoint is missing."""
    import torch

    from semisup.data.formats import build_data
    from semisup.eval.gallery import save_gallery
    from semisup.models.loading import load_run_model
    written = []
    for (fraction, start), frame in runs.groupby(["labeled_fraction", "start"], sort=True):
        # The cross-entropy control of the same script where there is one (limited labels: the CGC
        # script at lambda 0), else plain cross-entropy.
        baseline = "ce-script" if (frame["method"] == "ce-script").any() else "ce"
        ce = frame[frame["method"] == baseline].sort_values("seed")
        variants = frame[frame["method"] == "cgc"].groupby("signature", sort=True)
        if ce.empty or not len(variants):
            continue
        cgc_runs = frame[frame["method"] == "cgc"].reset_index(drop=True)
        labels = dict(
            zip(cgc_runs["signature"], settings_column(cgc_runs, ["labeled_fraction", "start"]))
        )  # what tells the CGC runs apart
        labels.update({sig: "" for sig in ce["signature"]})
        for n, (signature, cgc) in enumerate(variants):
            chosen = [ce.iloc[0], cgc.sort_values("seed").iloc[0]]
            dirs = [Path(r["run"]) for r in chosen]
            if not all((RunFiles(d).checkpoint).is_file() for d in dirs):
                print(
                    f"no gallery for {100 * fraction:g} % from {start}: checkpoint.pt missing in"
                    f" {' or '.join(map(str, dirs))}",
                    file=sys.stderr,
                )
                continue
            unloaded = [d for d in dirs if registry.not_loaded(load_saved_config(RunFiles(d).config).plugins)]
            if unloaded:
                say(f"no gallery for {100 * fraction:g} % from {start}: {unloaded[0]} needs plugin modules that "
                      "were not loaded (--plugins)")
                continue
            models, cfg = [], None
            for run_dir in dirs:
                model, cfg, _ = load_run_model(RunFiles(run_dir).checkpoint, {})
                models.append(model)
            names = [
                f"{METHOD_NAMES[r['method']]} (seed"
                f" {r['seed']}{', ' + labels[r['signature']] if labels[r['signature']] else ''})"
                for r in chosen
            ]
            suffix = "" if len(variants) == 1 else f"_{n + 1}"
            path = out / f"gallery_frac{fraction:g}_{start}{suffix}.png"
            written.append(
                save_gallery(
                    models, names, build_data(cfg), cfg, torch.device("cpu"), path, count=count, class_names=class_names
                )
            )
    return written


if __name__ == "__main__":
    sys.exit(main())
