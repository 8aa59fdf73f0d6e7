"""Evaluate checkpoints: a run's, or any weights file (torchvision, released CGC, SwAV trunk).

    python semisup/evaluate.py --checkpoint runs/X/checkpoint.pt [--data D --val-boxes B]
    python semisup/evaluate.py --weights resnet50.pth --arch resnet50 --data /imagenet --metrics top1,ch,iauc

Metrics: top-1/top-5, Content Heatmap (CH), validation CGC loss, kNN top-1, insertion and
deletion AUC (``semisup.eval``). Results are appended to ``eval.jsonl`` beside the checkpoint.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch

try:
    import semisup  # noqa: F401 (the installed package: `pip install -e .` in the checkout)
except ModuleNotFoundError:
    sys.exit("semisup is not installed in this Python: run `pip install -e .` in the checkout")

from semisup import registry
from semisup.config import add_setting
from semisup.errors import Parser, UsageError, UserError, cli
from semisup.eval.evaluator import Evaluator, format_results, full_metrics, metric_choices
from semisup.eval.insertion import InsertionSettings
from semisup.eval.metrics import not_meaningful
from semisup.files import append_lines
from semisup.method import explainers
from semisup.registry import METRICS
from semisup.runfiles import RunFiles
from semisup.train.trainer import weights_digest


def _metric_list(text: str) -> set[str]:
    names = {m.strip() for m in text.split(",") if m.strip()}
    unknown = sorted(names - set(metric_choices()))
    if unknown or not names:
        # A metric's key (pointing_game, a plugin's) is asked for by the name of its pass.
        hints = [f"{n} comes with --metrics {METRICS.get(n).choice}" for n in unknown if n in METRICS]
        raise UsageError(
            f"--metrics {text!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; choose from"
            f" {','.join(metric_choices())}" + (f" ({'; '.join(hints)})" if hints else "")
        )
    return names


def weights_metrics() -> set[str]:
    """--weights' default: a run's full evaluation but kNN, whose bank (a labeled split) a file of
    weights does not come with."""
    return full_metrics() - {"knn"}


def _listed(choices: set[str]) -> str:
    """'top1,ch,cgc-loss': in the registry's order, as the help lists them."""
    return ",".join(c for c in metric_choices() if c in choices)


def _weights_model(args) -> tuple:
    """(model, cfg, report) for --weights: a torchvision, released-CGC or SwAV file evaluated on
    --data (the demo without it) with this project's evaluation settings."""
    from semisup.config import make_config
    from semisup.models.loading import load_weights
    model, report = load_weights(args.weights, args.arch)
    fraction = (
        args.labeled_fraction
        if args.labeled_fraction is not None
        else (0.01 if "knn" in args.metrics and args.data else 1.0)
    )
    values = dict(data=args.data, val_boxes=args.val_boxes, val_labels=args.val_labels, arch=args.arch, pretrained=None,
                  labeled_fraction=fraction, cgc_weight=0.0, ce_baseline="plain", workers=args.workers,
                  max_eval_images=args.max_eval_images, splits_dir=args.splits_dir)
    values.update(
        {
            k: v
            for k, v in dict(
                ch_short_side=args.ch_short_side, image_size=args.image_size, resize_size=args.resize_size,
                explainer=args.explainer,
            ).items()
            if v is not None
        }
    )
    cfg = make_config({k: v for k, v in values.items() if v is not None or k == "pretrained"})
    if not report["head"]:
        asked = args.metrics - {"knn", "ch"}
        if asked:
            raise UsageError(
                f"--weights {args.weights} has no classification head (a self-supervised trunk): it can give kNN and "
                f"the released SwAV CH (--metrics knn,ch), not {','.join(sorted(asked))}"
            )
    return model, cfg, report


def build_parser() -> Parser:
    """The command's options (the generated tests read their types from here)."""
    parser = Parser(description="Evaluate checkpoints: top-1/top-5, Content Heatmap, CGC loss, kNN, insertion and "
                                                 "deletion AUC; gallery PNG.")
    for add_options in (_model_options, _data_options, _metric_options, _insertion_options, _system_options):
        add_options(parser)
    return parser


def _model_options(parser: Parser) -> None:
    which = parser.add_argument_group("what to evaluate (one of)")
    which.add_argument("--checkpoint", help="checkpoint.pt or model_best.pt written by semisup/run.py")
    which.add_argument(
        "--weights",
        help=(
            "any other weights file: torchvision's ResNet files, the released CGC checkpoints "
            "({'state_dict': {'module.…'}}), a SwAV trunk (kNN and released-SwAV CH only); with --arch"
        ),
    )
    add_setting(which, "arch", help="with --weights: the architecture (resnet18, resnet50, timm/NAME, ...)")
    which.add_argument(
        "--compare", help="a second checkpoint: its heatmaps go beside the first's in the gallery, its metrics below"
    )


def _data_options(parser: Parser) -> None:
    data = parser.add_argument_group("data")
    # Settings a run also has: the config's own flags, types and checks (default: the run's value).
    add_setting(data, "data", help="dataset root (default: the one the run used; with --weights: the demo without it)")
    for key in ("val_boxes", "val_labels", "splits_dir", "max_eval_images"):
        add_setting(data, key)
    add_setting(
        data,
        "labeled_fraction",
        help=(
            "with --weights: the labeled subset used as the kNN bank (default 0.01 when knn "
            "is asked on --data, else all of train/)"
        ),
    )


def _metric_options(parser: Parser) -> None:
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument(
        "--metrics",
        default=None,
        help=(
            f"comma-separated, from {','.join(metric_choices())} and the run's plugins' (default: "
            f"{_listed(full_metrics())}; with --weights {_listed(weights_metrics())})"
        ),
    )
    add_setting(metrics, "image_size", help="with --weights: crop size of top-1 and of insertion (default 224)")
    add_setting(metrics, "resize_size", help="with --weights: shorter side before the top-1 crop (default 256)")
    add_setting(metrics, "ch_short_side")
    add_setting(
        metrics,
        "explainer",
        help=(
            "heatmap method of CH, the CGC loss, the gallery and insertion (default: the run's; "
            "with --weights: gradcam)"
        ),
    )
    metrics.add_argument(
        "--ch-protocol",
        choices=["published", "released-swav", "both"],
        default="both",
        help=(
            "'published': the released CH scripts (all-zero maps count as uniform; strict CH and the zero "
            "count beside it); 'released-swav': evaluate_swav_imagenet_gradcam_energy_inside_bbox.py as "
            "released, which explains layer4 feature channel c instead of class c (FIDELITY.md); 'both'"
        ),
    )


def _insertion_options(parser: Parser) -> None:
    metrics = parser.add_argument_group("insertion and deletion AUC")
    metrics.add_argument(
        "--iauc-subset", type=int, default=5000,
        help="insertion/deletion: images per subset, each with its own train-mode saliency pass (released: 10 x 5,000)",
    )
    metrics.add_argument(
        "--iauc-saliency",
        choices=["train", "eval"],
        default="train",
        help=(
            "insertion/deletion saliency: 'train' as released (BatchNorm on batches of 100, which also move the "
            "running statistics the scoring uses) or 'eval' (the model as it is)"
        ),
    )
    metrics.add_argument(
        "--iauc-order",
        choices=["released", "stable"],
        default="released",
        help=(
            "insertion/deletion pixel order: 'released' (cv2.resize, numpy's argsort: its order among ties) or "
            "'stable' (F.interpolate and a stable sort on the device)"
        ),
    )


def _system_options(parser: Parser) -> None:
    system = parser.add_argument_group("system and output")
    add_setting(system, "workers", help="loader worker processes (default: the run's; with --weights: 8)")
    add_setting(system, "plugins", help=(
        "comma-separated plugin modules to import (their explainers, metrics, data formats); a run's own are never "
        "imported from its files: name them here if you trust them"))
    system.add_argument("--batch-size", type=int, default=64)
    system.add_argument("--gallery", type=int, default=16, help="images in the gallery PNG (0: none)")
    system.add_argument(
        "--out",
        help=(
            "folder for eval.jsonl and gallery PNG (default: the first checkpoint's folder; with "
            "--weights: eval-<file name>/)"
        ),
    )


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    logging.basicConfig(level=logging.WARNING)
    from semisup.data.formats import build_data

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    registry.load_plugins(registry.split_modules(args.plugins))  # only those the user names (and the environment's)
    if args.weights:
        choose_metrics(args)  # a file of weights has no plugins of its own; loading it reads the metrics
    loaded, head = load_models(args)
    if args.checkpoint:
        choose_metrics(args)  # after the run's explainer is checked (a missing plugin named first)
    bundle = build_data(loaded[0][1])
    rows, models = [], []
    for model, cfg, step, path, name in loaded:
        if head and model.fc.out_features != len(bundle.classes):
            raise UserError(
                f"{path}: its head has {model.fc.out_features} classes, the dataset {len(bundle.classes)}; pass the"
                " --data it was trained for"
            )
        trained = getattr(model, "trained_classes", None)
        if trained is not None and list(trained) != list(bundle.classes):
            differ = [f"{a} / {b}" for a, b in zip(trained, bundle.classes) if a != b]
            raise UserError(
                f"{path}: trained on other classes than the data's ({len(differ)} of {len(trained)} differ, e.g. "
                f"{', '.join(differ[:3])} as trained / in the data): its top-1 would count the wrong labels; pass "
                "the --data it was trained for")
        result, images = evaluate_one(args, model.to(device), cfg, bundle, device, head)
        # What the numbers were computed on: these weights (the digest final.json records) and images.
        rows.append(dict(method=name, checkpoint=str(path), step=step, metrics=sorted(args.metrics),
                         explainer=cfg.explainer, weights_sha256=weights_digest(model), images=images,
                         validation=len(bundle.val.source),
                         **result))
        models.append(model)
    archs = {c.arch for _, c, *_ in loaded}
    print(format_results(rows, not_meaningful(len(bundle.classes), archs.pop() if len(archs) == 1 else None)))
    out = Path(args.out or (f"eval-{Path(args.weights).name}" if args.weights else Path(args.checkpoint).parent))
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")  # an append-only log: one line per evaluation
    append_lines(RunFiles(out).eval, [json.dumps(dict(row, time=stamp)) for row in rows])
    if args.gallery and head:
        from semisup.eval.gallery import save_gallery

        png = out / ("gallery_compare.png" if args.compare else "gallery_eval.png")
        save_gallery(models, [name for *_, name in loaded], bundle, loaded[-1][1], device, png, count=args.gallery)
        print(f"gallery: {png}")
    print(f"results appended to {RunFiles(out).eval}")
    return 0


def check_args(args) -> None:
    """What the parser cannot say: one of --checkpoint and --weights, and the numbers' ranges."""
    if bool(args.checkpoint) == bool(args.weights):
        raise UsageError("pass one of --checkpoint (a run's checkpoint) or --weights FILE --arch NAME")
    if args.weights and not args.arch:
        raise UsageError("--weights needs --arch (the file's architecture, e.g. resnet50)")
    counts = ("max_eval_images", "batch_size", "iauc_subset", "ch_short_side", "image_size", "resize_size")
    for flag in ("workers", "gallery", *counts):
        value, least = getattr(args, flag), 1 if flag in counts else 0
        if value is not None and value < least:
            raise UsageError(f"--{flag.replace('_', '-')}: must be >= {least}, got {value}")


def choose_metrics(args) -> None:
    """--metrics as a set, checked against the registry once the run's plugins are loaded (a
    plugin's metric is a choice); unset: a run's full evaluation (with --weights, less kNN)."""
    if args.metrics is not None:
        args.metrics = _metric_list(args.metrics)
    else:
        args.metrics = full_metrics() if args.checkpoint else weights_metrics()


def load_models(args) -> tuple[list[tuple], bool]:
    """[(model, cfg, step, path, name)] for --weights or --checkpoint (and --compare), and whether
    the models have a classification head (a SwAV trunk has none)."""
    if args.weights:
        model, cfg, report = _weights_model(args)
        return [(model, cfg, None, args.weights, Path(args.weights).name)], report["head"]
    from semisup.models.loading import load_run

    keys = ("data", "val_boxes", "val_labels", "ch_short_side", "max_eval_images", "workers", "explainer")
    overrides = {key: getattr(args, key) for key in keys}  # None: the run's own value
    loaded = []
    for path in [args.checkpoint] + ([args.compare] if args.compare else []):
        model, cfg, step, classes = load_run(path, overrides)
        if args.arch is not None and args.arch != cfg.arch:  # a run's checkpoint names its architecture
            raise UsageError(f"--arch {args.arch}: {path} was trained as {cfg.arch}, which is what it is read as; "
                             "leave --arch out with --checkpoint (it is for --weights)")
        model.trained_classes = classes  # compared with the data's before it is evaluated
        note = registry.not_loaded_note(cfg.plugins, f"{path}'s run")
        if note:
            print(f"note: {note}", file=sys.stderr)
        explainers.get(cfg.explainer)  # an unknown --explainer: one line naming the choices
        loaded.append((model, cfg, step, path, f"{cfg.method} {Path(path).parent.name}"))
    return loaded, True


def evaluate_one(args, model, cfg, bundle, device: torch.device, head: bool) -> tuple[dict, int]:
    """The asked metrics of one model, without those --ch-protocol leaves out (or a trunk cannot
    give), and how many validation images they were computed on."""
    settings = InsertionSettings(size=cfg.image_size, subset=args.iauc_subset, saliency_mode=args.iauc_saliency,
                                 order=args.iauc_order, explainer=cfg.explainer)
    evaluator = Evaluator(cfg, bundle, device, batch_size=args.batch_size)
    result = evaluator.run(model, metrics=args.metrics, insertion=settings)
    dropped = {"published": ("ch_released_swav",), "released-swav": ("ch", "ch_strict", "ch_zero"), "both": ()}
    left_out = dropped[args.ch_protocol] + (() if head else ("top1", "top5", "ch", "ch_strict", "ch_zero"))
    return {k: v for k, v in result.items() if k not in left_out}, len(evaluator.indices)


if __name__ == "__main__":
    sys.exit(main())
