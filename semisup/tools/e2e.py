"""End to end: the planner's promise measured on the real training loop, on this node.

    python -m semisup.tools.bench e2e                      # the 1 % recipe's shape: ResNet-50, 128 + 128, 224 px
    python -m semisup.tools.bench e2e --arch resnet18 --batch 16 --image-size 96 --image-scale 0.4 --steps 30 \\
        --workers 0 --device cpu --out e2e.json           # a CPU-sized run
    python -m semisup.tools.bench e2e ... -- --gallery 0   # run.py's flags after --

Generates, in a temporary folder, an ImageNet-shaped tree of photographic JPEGs (train/<wnid>/,
flat val/ with VOC XML boxes, a split file naming the labeled subset), just large enough for
``--steps`` steps in ``--epochs`` epochs; runs the real entry point (``parse_config`` +
``trainer.train``, the code path of run.py and the cluster jobs); prints, per part the planner
predicts, the wall seconds the run spent (final.json's ``seconds``) beside ``plan.plan``'s
prediction for the same shape, from rates measured on this node first (or ``--rates FILE``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from semisup.errors import Parser, UsageError
from semisup.files import read_json, write_json_atomic, write_text_atomic
from semisup.train import plan

# ImageNet's photos: mostly 500 x 375 (both orientations), some 500 x 333 / 500 x 400. A few
# sizes, as in ImageNet, so Content Heatmap's same-size batches are as large as there.
IMAGE_SIZES = [(500, 375)] * 4 + [(375, 500)] * 2 + [(500, 333), (333, 500), (500, 400), (400, 375), (500, 350)]
GENERATED_PER_PROCESS = 64  # below this many images, one process writes them all


@dataclass
class Tree:
    """A generated ImageNet-layout folder and its counts."""
    root: Path
    split: Path
    train: list[str]  # paths of train/<wnid>/<wnid>_<k>.JPEG
    val: list[str]  # paths of val/ILSVRC2012_val_<k>.JPEG
    labeled: int


# ---- the tree ----------------------------------------------------------------------------
def draw_size(rng: np.random.Generator, scale: float) -> tuple[int, int]:
    """(width, height) of one photo: an ImageNet size, scaled by ``scale`` (CPU-sized runs)."""
    w, h = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
    return max(8, round(w * scale)), max(8, round(h * scale))


def write_photos(jobs: list[tuple[str, int, int, int]], noise: float = 7.0) -> None:
    """Write each (path, width, height, seed) as bench's ``make_jpegs`` makes its files: a random
    crop of one of scikit-learn's two photographs, resized, with sensor-like noise, quality 90."""
    from semisup.tools.measure import sample_photos, write_photo

    photos = sample_photos()
    for path, w, h, seed in jobs:
        write_photo(path, photos[seed % len(photos)], w, h, np.random.default_rng(seed), noise)


def write_all(jobs: list[tuple[str, int, int, int]]) -> None:
    """All photos, over this node's cores when there are many (ImageNet-sized batches need thousands)."""
    processes = min(os.cpu_count() or 1, math.ceil(len(jobs) / GENERATED_PER_PROCESS))
    if processes <= 1:
        write_photos(jobs)
        return
    chunks = [jobs[i::processes] for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(write_photos, chunks))


def voc_xml(size: tuple[int, int], wnid: str, box: tuple[int, int, int, int]) -> str:
    """An ImageNet validation annotation: one object, 1-based pixel box (xmin, ymin, xmax, ymax)."""
    (w, h), (x0, y0, x1, y1) = size, box
    return (f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size><object>"
            f"<name>{wnid}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
            "</object></annotation>")


def make_tree(root: Path, classes: int, per_class: int, val_per_class: int, labeled: int, scale: float,
              seed: int = 0) -> Tree:
    """train/<wnid>/<wnid>_<k>.JPEG, flat val/ILSVRC2012_val_<k>.JPEG with boxes/<id>.xml, and
    split.txt naming ``labeled`` training files, the same number from each class (+-1)."""
    rng = np.random.default_rng(seed)
    wnids = [f"n{c + 1:08d}" for c in range(classes)]
    jobs, train, val = [], [], []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True)
        for k in range(per_class):
            path = root / "train" / wnid / f"{wnid}_{k}.JPEG"
            jobs.append((str(path), *draw_size(rng, scale), len(jobs) + seed))
            train.append(str(path))
    split = [Path(train[c * per_class + k]).name for k in range(per_class) for c in range(classes)][:labeled]
    for folder in ("val", "boxes"):
        (root / folder).mkdir()
    for k in range(classes * val_per_class):
        wnid, image_id = wnids[k % classes], f"ILSVRC2012_val_{k + 1:08d}"
        w, h = draw_size(rng, scale)
        jobs.append((str(root / "val" / f"{image_id}.JPEG"), w, h, len(jobs) + seed))
        val.append(jobs[-1][0])
        x0, y0 = int(rng.integers(1, w // 3 + 2)), int(rng.integers(1, h // 3 + 2))
        box = (x0, y0, int(rng.integers(x0 + w // 3, w + 1)), int(rng.integers(y0 + h // 3, h + 1)))
        write_text_atomic(root / "boxes" / f"{image_id}.xml", voc_xml((w, h), wnid, box))
    write_all(jobs)
    write_text_atomic(root.parent / "split.txt", "\n".join(split) + "\n")
    return Tree(root, root.parent / "split.txt", train, val, labeled)


# ---- the rates ---------------------------------------------------------------------------
def measure_rates(cfg, tree: Tree, repeats: int) -> plan.Rates:
    """The planner's rates on this node at this run's sizes: the step (bench step's setup,
    ``Trainer.training_step``), forwards and CH as ``bench gpu`` times them, the loaders per core
    as ``bench loader`` does, on the generated files."""
    return plan.Rates(**device_rates(cfg, repeats), **loader_rates(cfg, tree, repeats), **gallery_rates(cfg, repeats))


def timed(fn, repeats: int, sync) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def device_rates(cfg, repeats: int) -> dict:
    """Images/s of the step (3 x batch per step), of a top-1 forward at --image-size and of CH
    (forward + Grad-CAM at --ch-short-side, ImageNet's 4:3) on the run's device."""
    from semisup.config import compiles
    from semisup.data import transforms as T
    from semisup.distributed import amp_dtype
    from semisup.method import explainers
    from semisup.tools.measure import step_setup
    device = run_device(cfg)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    ns = SimpleNamespace(arch=cfg.arch, batch=cfg.batch_labeled, image_size=cfg.image_size, device=str(device),
                         amp=cfg.amp, channels_last=cfg.channels_last, group_size=cfg.group_size,
                         bn_geometry=cfg.bn_geometry)
    trainer, labeled, unlabeled = step_setup(ns)
    if compiles(cfg.compile, device.type):  # the run's variant: compiled by default on CUDA
        from semisup.train.compiling import CompiledForward
        trainer.forward = CompiledForward(trainer.model, lambda: trainer.model, enabled=True)
    out = dict(step_images_per_s=3 * ns.batch / timed(lambda: trainer.training_step(labeled, unlabeled), repeats, sync))
    model, dtype = trainer.model.eval(), amp_dtype(cfg, device)
    channels_last = cfg.channels_last and cuda
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        x = T.normalize(labeled["image"], channels_last=channels_last)
        out["infer_images_per_s"] = ns.batch / timed(lambda: model(x), repeats, sync)
    side = cfg.ch_short_side  # ImageNet's 4:3 at CH's short side
    big = F.interpolate(labeled["image"][: max(1, ns.batch // 4)].float(), size=(side, round(side * 4 / 3)))
    big = T.normalize(big.to(torch.uint8), channels_last=channels_last)
    classes = torch.zeros(big.shape[0], dtype=torch.long, device=device)
    with torch.inference_mode():  # as the evaluator computes CH: float32, closed-form Grad-CAM
        seconds = timed(lambda: explainers.gradcam(model, *model(big), classes), repeats, sync)
    out["ch_images_per_s"] = big.shape[0] / seconds
    return out


def gallery_rates(cfg, repeats: int) -> dict:
    """Seconds of an evaluation's TensorBoard grid, drawn and encoded (median, warm), and of the end of run's
    gallery.png (one call, the first in this process, as in a run) at the run's --gallery, sizes
    and architecture, on the generated validation images."""
    from semisup.data.formats import build_data
    from semisup.eval.gallery import gallery_grid, save_gallery
    from semisup.models.base import build_model
    if not cfg.gallery:
        return dict(gallery_grid_s=0.0, gallery_png_s=0.0)
    device = run_device(cfg)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bundle = build_data(cfg)
    model = build_model(cfg.arch, len(bundle.classes)).to(device).eval()
    with tempfile.TemporaryDirectory(prefix="semisup-gallery-") as folder:
        start = time.perf_counter()
        save_gallery([model], [cfg.method], bundle, cfg, device, Path(folder) / "gallery.png")
        png = time.perf_counter() - start
    from torch.utils.tensorboard.summary import image as tensorboard_image

    def grid_into_tensorboard():  # the grid and its PNG encoding, as RunLog.image hands it to TensorBoard
        tensorboard_image("gallery", gallery_grid(model, bundle, cfg, device), dataformats="HWC")
    return dict(gallery_grid_s=timed(grid_into_tensorboard, repeats, sync), gallery_png_s=png)


def run_device(cfg) -> torch.device:
    """The device the run trains on (--device auto: CUDA where there is one)."""
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def loader_rates(cfg, tree: Tree, repeats: int, sample: int = 32) -> dict:
    """Images/s of one single-threaded loader worker (as the planner counts them: per core) for
    each stream and evaluation view, on up to ``sample`` generated files of each folder."""
    from semisup.data.datasets import EvalDataset, FileSource, TrainDataset
    from semisup.tools.measure import alternate
    train, val = (FileSource(paths[:sample], [0] * len(paths[:sample])) for paths in (tree.train, tree.val))
    size, resize, scale, every = cfg.image_size, cfg.resize_size, cfg.crop_scale_min, np.arange(len(train))
    datasets = dict(labeled_per_s=(TrainDataset(train, every, size, resize, scale, crop=True, pair=False), True),
                    unlabeled_per_s=(TrainDataset(train, every, size, resize, scale, crop=False, pair=True), True),
                    val_per_s=(EvalDataset(val, resize, size), False),
                    ch_val_per_s=(EvalDataset(val, cfg.ch_short_side, None), False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker: the rate is per worker process
    folder = tempfile.TemporaryDirectory(prefix="semisup-valcache-")
    try:
        datasets["val_cached_per_s"] = (cached_crops(datasets["val_per_s"][0], Path(folder.name)), False)
        out = {}
        for name, (dataset, seeded) in datasets.items():
            def load_all():
                for i in range(len(dataset)):
                    dataset[(i, i) if seeded else i]
            out[name] = len(dataset) / statistics.median(alternate(load_all, lambda: None, repeats)[0])
        return out
    finally:
        torch.set_num_threads(threads)
        folder.cleanup()


def cached_crops(dataset, folder: Path):
    """``dataset``'s crops through ``--val-cache``'s file (written here, then read)."""
    from torch.utils.data import DataLoader

    from semisup.data import valcache
    return valcache.build_cache(folder, dataset, DataLoader(dataset, batch_size=16))


def read_rates(path: str) -> plan.Rates:
    """Rates from the JSON ``bench gpu --out`` writes (its ``rates`` entry)."""
    try:
        return plan.Rates(**read_json(Path(path))["rates"])
    except (KeyError, TypeError) as err:
        raise UsageError(f"--rates {path}: not the JSON `python -m semisup.tools.bench gpu --out` writes "
                         f"({type(err).__name__}: {err})") from err


# ---- the report --------------------------------------------------------------------------
# The run's parts (final.json "seconds") for each part the planner predicts.
# The planner names its evaluation parts after the passes the metrics declare ("per-epoch top-1",
# "final CH, kNN, CGC loss"): they are found by their first word.
PREDICTED = [("train steps (incl. data wait)", "train", ("train_steps", "data_wait")),
             (None, "per-epoch", ("epoch_eval",)),  # None: the planner's own name of the part
             (None, "final", ("final_eval",))]
MEASURED_ONLY = [("checkpoints", "checkpoints"), ("startup (loaders, workers)", "startup")]
OUTSIDE = "before fit (data scan, model, run dir)"


def report_rows(seconds: dict, wall: float, estimate: dict) -> list[dict]:
    """Rows part, measured_s, predicted_s, ratio (measured / predicted; None where the planner
    predicts nothing). The measured rows add up to ``wall``, the seconds ``train()`` took: what
    final.json's parts do not cover is the row OUTSIDE."""
    rows = []
    for part, first_word, keys in PREDICTED:
        name, planned = next((n, p) for n, p in estimate["parts"].items() if n.split()[0] == first_word)
        measured, predicted = sum(seconds[k] for k in keys), planned["seconds"]
        rows.append(dict(part=part or name, measured_s=measured,
                         predicted_s=predicted, ratio=measured / predicted, bound=planned["bound"],
                         planner_gpu_s=planned["gpu_s"], planner_decode_s=planned["decode_s"]))
    rows += [dict(part=part, measured_s=seconds[key], predicted_s=None, ratio=None) for part, key in MEASURED_ONLY]
    rows.append(dict(part=OUTSIDE, measured_s=wall - seconds["total"], predicted_s=None, ratio=None))
    rows.append(dict(part="total", measured_s=wall, predicted_s=estimate["total_s"], ratio=wall / estimate["total_s"]))
    return rows


def format_table(rows: list[dict], data_wait: float) -> str:
    """The rows as a table; the planner's compute / decode split beside each predicted part."""
    lines = [f"{'part':<40}{'measured s':>12}{'predicted s':>13}{'measured/predicted':>20}"
             "   planner: device / decode s, bound"]
    for r in rows:
        predicted = f"{r['predicted_s']:>13.2f}" if r["predicted_s"] is not None else f"{'-':>13}"
        ratio = f"{r['ratio']:>20.2f}" if r["ratio"] is not None else f"{'-':>20}"
        note = f"   {r['planner_gpu_s']:.2f} / {r['planner_decode_s']:.2f}, {r['bound']}" if "bound" in r else ""
        lines.append(f"{r['part']:<40}{r['measured_s']:>12.2f}{predicted}{ratio}{note}")
    predicted = rows[: len(PREDICTED)]
    measured, planned = sum(r["measured_s"] for r in predicted), sum(r["predicted_s"] for r in predicted)
    lines.append(f"the predicted parts alone: measured {measured:.2f} s, predicted {planned:.2f} s, "
                 f"ratio {measured / planned:.2f}; of the train steps, {data_wait:.2f} s waited for batches")
    return "\n".join(lines)


# ---- the command -------------------------------------------------------------------------
def build_parser() -> Parser:
    parser = Parser(prog="python -m semisup.tools.bench e2e", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--steps", type=int, default=40, help="optimizer steps of the run")
    add("--epochs", type=int, default=2, help="epochs the steps are spread over (>= 2: top-1 runs every epoch, the "
                                              "last epoch's as part of the full evaluation)")
    add("--arch", default="resnet50", help="resnet50 (the 1 %% recipe), resnet18, resnet_tiny, ...")
    add("--batch", type=int, default=128, help="labeled and unlabeled batch each (the recipe: 128)")
    add("--image-size", type=int, default=224, help="training crop; the view's resize and CH's short side scale with "
                                                    "it (256/224, 448/224)")
    add("--image-scale", type=float, default=1.0, help="generated photos' sides x this (1: ImageNet's ~500 x 375; "
                                                       "0.2 for CPU tests)")
    add("--classes", type=int, default=10)
    add("--per-class", type=int, help="training images per class (default: just enough labeled images for "
                                      "--steps / --epochs steps an epoch)")
    add("--val-per-class", type=int, default=5, help="validation images per class, each with a VOC box")
    add("--workers", type=int, default=8, help="loader workers per stream (the recipe: 8)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--threads", type=int, help="torch threads of the calibration and the run (default: torch's; 1 on a CPU node "
                                    "others share: OpenMP threads stall when its cores are busy)")
    add("--cores", type=int, default=os.cpu_count() or 1, help="cores the planner assumes (default: this node's)")
    add("--rates", help="JSON written by `bench gpu --out` (default: measure them here first, at this run's sizes)")
    add("--repeats", type=int, default=3, help="timed repeats of each rate measurement")
    add("--tmp-dir", help="where the generated tree and the run directory go (default: the system's)")
    add("--out", help="also write the rows (and the rates, the shape, the run's seconds) to this JSON")
    return parser


def check_args(args) -> None:
    """One line naming the option for a value no run can be made with."""
    for key, low in dict(steps=1, epochs=2, batch=1, image_size=16, classes=1, per_class=1, val_per_class=1, workers=0,
                         threads=1, cores=1, repeats=1).items():
        value = getattr(args, key)
        if value is not None and value < low:
            raise UsageError(f"--{key.replace('_', '-')}: must be >= {low}, got {value}")
    if not (0 < args.image_scale <= 4 and math.isfinite(args.image_scale)):
        raise UsageError(f"--image-scale: must be in (0, 4], got {args.image_scale}")
    if args.epochs > args.steps:
        raise UsageError(f"--epochs {args.epochs}: more than --steps {args.steps} (an epoch is at least one step)")
    if args.per_class is not None and args.per_class * args.classes < labeled_images(args):
        raise UsageError(f"--per-class {args.per_class}: {args.classes} classes x {args.per_class} images are fewer "
                         f"than the {labeled_images(args)} labeled images of {math.ceil(args.steps / args.epochs)} "
                         f"steps of {args.batch} an epoch")
    if args.rates and not Path(args.rates).is_file():
        raise UsageError(f"--rates {args.rates}: no such file (write one with `python -m semisup.tools.bench gpu "
                         "--out FILE`)")


def labeled_images(args) -> int:
    """Labeled images for ceil(steps / epochs) full batches an epoch."""
    return math.ceil(args.steps / args.epochs) * args.batch


def run_argv(args, tree: Tree, tmp: Path, run_flags: list[str]) -> list[str]:
    """run.py's flags for this run: the recipe's defaults, shrunk by the options."""
    argv = ["--data", str(tree.root), "--val-boxes", str(tree.root / "boxes"), "--split-file", str(tree.split),
            "--run-dir", str(tmp / "run"), "--arch", args.arch,
            "--batch-labeled", str(args.batch), "--batch-unlabeled", str(args.batch),
            "--image-size", str(args.image_size),
            "--resize-size", str(round(args.image_size * 256 / 224)), "--ch-short-side", str(args.image_size * 2),
            "--workers", str(args.workers), "--device", args.device, "--epochs", str(args.epochs)]
    if math.ceil(args.steps / args.epochs) * args.epochs != args.steps:
        argv += ["--max-steps", str(args.steps)]  # the last epoch stops early
    return argv + run_flags


def main(argv: list[str]) -> dict:
    """Generate, calibrate, run, compare; returns the report (also printed, and written to --out)."""
    from semisup.tools.measure import emit
    run_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    check_args(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        report = measure(args, run_flags)
    finally:
        torch.set_num_threads(threads)
    report["argv"] = list(argv)
    if args.out:
        write_json_atomic(Path(args.out), report)
    return emit(**report)


def measure(args, run_flags: list[str]) -> dict:
    """The tree, the rates, the planner's estimate and the run, in a temporary folder; prints the table."""
    from semisup.config import check_device, parse_config
    from semisup.tools.measure import machine
    from semisup.train.trainer import train
    with tempfile.TemporaryDirectory(prefix="semisup-e2e-", dir=args.tmp_dir) as name:
        tmp, clock = Path(name), time.perf_counter()
        # run.py's flags are checked before any photo is written (minutes at the recipe's batch).
        check_device(parse_config(run_argv(args, Tree(tmp / "imagenet", tmp / "split.txt", [], [], 0), tmp,
                                           run_flags)).device)
        per_class = args.per_class or math.ceil(labeled_images(args) / args.classes)
        tree = make_tree(tmp / "imagenet", args.classes, per_class, args.val_per_class, labeled_images(args),
                         args.image_scale)
        cfg = parse_config(run_argv(args, tree, tmp, run_flags))
        generate_s, clock = time.perf_counter() - clock, time.perf_counter()
        rates = read_rates(args.rates) if args.rates else measure_rates(cfg, tree, args.repeats)
        calibrate_s = time.perf_counter() - clock
        summary = dict(labeled=tree.labeled, validation=len(tree.val), unlabeled=len(tree.train))
        estimate = plan.plan_run(cfg.to_dict(), summary, rates, gpus=1, cores=args.cores, device=args.device)
        clock = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the run's own table and "next:" lines; stdout is the report's
            result = train(cfg)
        wall = time.perf_counter() - clock
    rows = report_rows(result["seconds"], wall, estimate)
    source = (f"from {args.rates}" if args.rates else
              f"measured here first ({calibrate_s:.1f} s: step by bench step's setup and Trainer.training_step, "
              "forward and CH as bench gpu times them, loaders per core as bench loader does, the gallery's grid "
              "and PNG as the trainer draws them, on the generated files at this run's sizes)")
    print(f"e2e on {machine()}: {result['steps']} steps of {args.batch} + {args.batch} ({args.arch}, "
          f"{args.image_size} px), {args.epochs} epochs, {tree.labeled} labeled / {len(tree.train)} train / "
          f"{len(tree.val)} val images; planner: 1 device, {args.cores} cores; rates {source}")
    print(format_table(rows, result["seconds"]["data_wait"]))
    return dict(bench="e2e", rows=rows, run_wall_s=wall, generate_s=generate_s, calibrate_s=calibrate_s,
                rates_source=args.rates or "measured", rates=vars(rates), run=estimate["run"], node=estimate["node"],
                run_seconds=result["seconds"], steps=result["steps"])
