"""What a run says of itself: where its trunk came from, the dry run's summary with the planner's
estimate, and, at the end, the result table and the commands to run next."""
from __future__ import annotations

from pathlib import Path

import torch

from semisup import cpus
from semisup.config import Config


def random_start_warning(cfg: Config) -> str | None:
    """Said first when a limited-label run on a dataset starts from random weights: its recipe's
    learning rates (head 5) are those of fine-tuning a self-supervised trunk."""
    if cfg.pretrained is not None or cfg.is_demo or cfg.full_supervision:
        return None
    return (
        "the trunk starts from random weights, but the limited-label recipe (trunk lr 0.02, head lr 5) fine-tunes a "
        "self-supervised one: pass --pretrained pretrained/swav_800ep_pretrain.pth.tar (`semisup-pretrained "
        "download`); if random weights are meant, this is only a reminder"
    )


def describe_start(cfg: Config, report: dict | None) -> str:
    """Where the trunk's weights came from, said at the start of every run."""
    if report is None:
        warning = random_start_warning(cfg)
        return ("random initialisation (--pretrained none)" if cfg.is_demo else "random initialisation") + (
            f"; WARNING: {warning}" if warning else ""
        )
    manifest = report.get("manifest")
    if manifest:
        return (f"{cfg.pretrained}: {manifest['what']} (sha256 {manifest['sha256'][:12]} verified; made by "
                f"`{manifest['command']}`); --pretrained none trains from scratch")
    return f"{cfg.pretrained} ({report['loaded']} tensors)"


def planner_line(cfg: Config, summary: dict) -> str:
    """The planner's estimate of this run (measured H100 rates) on the node the dry run ran on,
    or, without a GPU here, on one H100 with 16 cores."""
    from semisup.train import plan
    if cfg.arch != "resnet50":
        return f"planner: its rates are a ResNet-50's; no estimate for --arch {cfg.arch}"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    node = (gpus, cpus.process_cpus(processes=1)[0]) if gpus else (1, 16)  # the CPUs this job may use
    rates, settings = plan.measured_rates("h100"), cfg.to_dict()
    estimate = plan.plan_run(settings, summary, rates, gpus=node[0], cores=node[1])
    where = f"this node ({node[0]} GPU(s), {node[1]} cores)" if gpus else "1 H100 with 16 cores (no GPU here)"
    hint = ""
    if not cfg.val_cache and estimate["bounded_by"].startswith("per-epoch") and estimate["bounded_by"].endswith(
            "(decode)"):
        cached = plan.plan_run({**settings, "val_cache": "x"}, summary, rates, gpus=node[0], cores=node[1])
        hint = f"; --val-cache DIR: about {cached['total_s'] / 60:.1f} min (top-1's crops decoded once)"
    return (
        f"planner: about {estimate['total_s'] / 60:.1f} min on {where} at H100 rates, longest part"
        f" {estimate['bounded_by']}{hint} (semisup-bench plan for other nodes; bench gpu --out measures yours)"
    )


def print_summary(summary: dict) -> None:
    width = max(len(k) for k in summary)
    print("dry run: nothing was trained")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")


def next_commands(run_dir: Path, gallery: bool = True) -> str:
    """What to run after a finished run: the table, TensorBoard, the status of its folder
    (``gallery``: the run drew gallery.png)."""
    parent, files = run_dir.parent, "metrics.csv, final.json, gallery.png, tensorboard/"
    files = files if gallery else files.replace(" gallery.png,", "")
    return (
        f"\nrun directory: {run_dir} ({files})\nnext:\n  python"
        f" semisup/report.py {parent}/* --out reports/        # tables over seeds, plots, galleries\n  tensorboard"
        f" --logdir {parent}                              # curves, galleries, hyper-parameters\n  python"
        f" semisup/evaluate.py --checkpoint {run_dir / 'checkpoint.pt'} --metrics iauc,dauc   # insertion /"
        " deletion AUC"
    )


def result_rows(cfg: Config, result: dict) -> list[dict]:
    """The final and the best-epoch rows of a run's result table, each labelled."""
    name = f"{cfg.method} {cfg.labeled_fraction:g}"
    rows = [dict(method=f"{name} final ep{result['final'].get('epoch', '?')}", **result["final"])]
    if result.get("best"):
        rows.append(dict(method=f"{name} best* ep{result['best']['epoch']}", **result["best"]))
    return rows
