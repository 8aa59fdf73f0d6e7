"""Benchmarks: one JSON line per result, medians over repeats, each pair run alternately in
one process so their ratio holds on a noisy machine.

    python -m semisup.bench step   [--arch resnet18 --batch 16 --image-size 224 --device cpu --amp off]
    python -m semisup.bench loss   [--batch 128]
    python -m semisup.bench loader [--images 64]
    python -m semisup.bench eval   [--images 24]

Numbers depend on the machine: report them with the command and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semisup import cgc
from semisup import transforms as T


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def emit(**row) -> dict:
    row["machine"] = machine()
    print(json.dumps(row), flush=True)
    return row


def alternate(a, b, repeats: int, sync=lambda: None) -> tuple[list[float], list[float]]:
    """Time a() and b() alternately ``repeats`` times each, after one warm-up of each."""
    a(), b()
    sync()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
    return ta, tb


# ---- step ---------------------------------------------------------------------------------
def _step_setup(args):
    from semisup.config import make_config
    from semisup.data import DataBundle, EvalSet
    from semisup.distributed import Dist
    from semisup.train import Trainer

    device = torch.device(args.device)
    num_classes = 1000 if args.arch != "resnet_tiny" else 10
    cfg = make_config(dict(data="bench", arch=args.arch, batch_labeled=args.batch, batch_unlabeled=args.batch, image_size=args.image_size,
                           amp=args.amp, channels_last=args.channels_last, device=args.device, compile=False))
    bundle = DataBundle([str(i) for i in range(num_classes)], None, np.arange(args.batch * 10), object(), np.arange(10), EvalSet(None, None), {})
    trainer = Trainer(cfg, Dist(device=device), None, bundle)
    trainer.model.train()
    g = torch.Generator().manual_seed(0)
    image = lambda: torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g).to(device)
    labeled = dict(image=image(), label=torch.randint(0, num_classes, (args.batch,), generator=g).to(device))
    boxes = torch.stack([torch.full((args.batch,), 0.1), torch.full((args.batch,), 0.2), torch.full((args.batch,), 0.6), torch.full((args.batch,), 0.7)], 1)
    unlabeled = dict(view=image(), aug=image(), box=boxes.to(device), flip=(torch.arange(args.batch) % 2 == 0).to(device))
    return trainer, labeled, unlabeled


def floor_step(trainer, labeled, unlabeled):
    """The same three forwards and one backward, cross-entropy only (pseudo-labels on the
    unlabeled views), no explanation work: what a CGC step cannot cost less than."""
    from contextlib import nullcontext
    autocast = torch.autocast(trainer.device.type, dtype=trainer.amp_dtype) if trainer.amp_dtype else nullcontext()
    model = trainer.ddp
    with autocast:
        logits, _ = model(trainer._images(labeled, "image"))
        loss = F.cross_entropy(logits.float(), labeled["label"].to(trainer.device))
        view_logits, _ = model(trainer._images(unlabeled, "view"))
        pseudo = view_logits.detach().argmax(1)
        aug_logits, _ = model(trainer._images(unlabeled, "aug"))
        loss = loss + trainer.cfg.cgc_weight * (F.cross_entropy(view_logits.float(), pseudo) + F.cross_entropy(aug_logits.float(), pseudo))
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()


def bench_step(args):
    if args.variant:  # child process: one variant, report time and peak memory
        trainer, labeled, unlabeled = _step_setup(args)
        fn = (lambda: trainer.training_step(labeled, unlabeled)) if args.variant == "cgc" else (lambda: floor_step(trainer, labeled, unlabeled))
        for _ in range(2):
            fn()
        print(json.dumps(dict(max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
        return
    trainer, labeled, unlabeled = _step_setup(args)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    t_cgc, t_floor = alternate(lambda: trainer.training_step(labeled, unlabeled), lambda: floor_step(trainer, labeled, unlabeled), args.repeats, sync)
    row = dict(bench="step", arch=args.arch, batch_per_stream=args.batch, image_size=args.image_size, device=args.device, amp=args.amp,
               channels_last=args.channels_last, step_s=statistics.median(t_cgc), floor_s=statistics.median(t_floor))
    row["step_over_floor"] = row["step_s"] / row["floor_s"]
    row["images_per_s"] = 3 * args.batch / row["step_s"]
    if args.device.startswith("cuda"):
        peaks = []
        for fn in (lambda: trainer.training_step(labeled, unlabeled), lambda: floor_step(trainer, labeled, unlabeled)):
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() / 2**20)
    else:  # each variant in its own process, so max RSS is its own
        peaks = []
        for variant in ("cgc", "floor"):
            out = subprocess.run([sys.executable, "-m", "semisup.bench", "step", "--variant", variant, *args.passthrough],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            peaks.append(json.loads(out)["max_rss_mb"])
    row.update(peak_mb=peaks[0], floor_peak_mb=peaks[1], memory_over_floor=peaks[0] / peaks[1])
    return emit(**row)


# ---- loss ---------------------------------------------------------------------------------
def bench_loss(args):
    """Our loss (7 x 7 factors) vs the released per-sample loop on 224 x 224 maps, fwd + bwd."""
    from semisup.reference import pixel_boxes_and_flips, released_cgc_loss
    g = torch.Generator().manual_seed(0)
    B, device = args.batch, torch.device(args.device)
    cam = torch.rand(B, 7, 7, generator=g).to(device).requires_grad_()
    cam_aug = torch.rand(B, 7, 7, generator=g).to(device).requires_grad_()
    pixel_boxes, boxes, flips = pixel_boxes_and_flips(B, g)
    boxes, flips = boxes.to(device), flips.to(device)
    flip_list = flips.tolist()

    def ours():
        cgc.cgc_loss(cam_aug, cam, boxes, flips, group_size=args.group).backward()

    def loop():
        released_cgc_loss(cam_aug, cam, pixel_boxes, flip_list, group_size=args.group).backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_ours, t_loop = alternate(ours, loop, args.repeats, sync)
    with torch.no_grad():
        a = cgc.cgc_loss(cam_aug, cam, boxes, flips, group_size=args.group).item()
        b = released_cgc_loss(cam_aug, cam, pixel_boxes, flip_list, group_size=args.group).item()
    return emit(bench="loss", batch=B, group=args.group, device=args.device, ours_s=statistics.median(t_ours), loop_s=statistics.median(t_loop),
                loop_over_ours=statistics.median(t_loop) / statistics.median(t_ours), loss_ours=a, loss_loop=b,
                relative_difference=abs(a - b) / abs(b))


# ---- loader -------------------------------------------------------------------------------
def make_jpegs(folder: Path, count: int, seed: int = 0) -> list[str]:
    """ImageNet-like JPEGs (about 500 x 375, both orientations, smooth content plus noise)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        w, h = [(500, 375), (375, 500), (500, 333), (480, 360)][i % 4]
        base = rng.integers(0, 255, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 12, size=(h, w, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        path = folder / f"img{i:05d}.JPEG"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def reference_three_tensors(paths):
    """The reference pipeline: PIL decode, then view, augmented view and a third (unused)
    augmented copy, each ToTensor + Normalize in the worker."""
    import torchvision.transforms as TV
    from PIL import Image
    normalize = TV.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)
    view_tf = TV.Compose([TV.Resize(256), TV.CenterCrop(224)])
    aug_tf = TV.Compose([TV.RandomResizedCrop(224), TV.RandomHorizontalFlip()])
    to_tensor = TV.Compose([TV.ToTensor(), normalize])

    def sample(path):
        with Image.open(path) as img:
            img = img.convert("RGB")
        view = view_tf(img)
        return to_tensor(view), to_tensor(aug_tf(view)), to_tensor(aug_tf(img))
    return sample


def bench_loader(args):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker: the number is per worker process
    try:
        return _bench_loader(args)
    finally:
        torch.set_num_threads(threads)


def _bench_loader(args):
    from semisup.data import FileSource, TrainDataset
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        dataset = TrainDataset(FileSource(paths, [0] * len(paths)), np.arange(len(paths)), 224, 256, 0.08, crop=False, pair=True)
        reference = reference_three_tensors(paths)

        def ours():
            for i in range(len(paths)):
                dataset[(i, i)]

        def plain():
            for p in paths:
                reference(p)

        t_ours, t_ref = alternate(ours, plain, args.repeats)
    n = len(paths)
    return emit(bench="loader", images=n, ours_per_s=n / statistics.median(t_ours), reference_per_s=n / statistics.median(t_ref),
                ours_over_reference=statistics.median(t_ref) / statistics.median(t_ours), processes=1, threads=1)


# ---- eval ---------------------------------------------------------------------------------
def bench_eval(args):
    from semisup.config import make_config
    from semisup.data import DataBundle, EvalSet, FileSource
    from semisup.evaluate import Evaluator, content_heatmap
    from semisup.models import build_model
    torch.manual_seed(0)
    model = build_model(args.arch, 1000).eval()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        source = FileSource(paths, list(range(len(paths))))
        sizes = [source.size(i) for i in range(len(paths))]
        boxes = [np.array([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]) for h, w in sizes]
        bundle = DataBundle([str(i) for i in range(1000)], source, np.arange(len(paths)), None, None, EvalSet(source, boxes, sizes), {})
        cfg = make_config(dict(data="bench", arch=args.arch, workers=0, ch_short_side=args.short_side))
        evaluator = Evaluator(cfg, bundle, torch.device("cpu"), batch_size=args.batch)
        result = {}

        def batched():
            with torch.no_grad():
                result["batched"] = evaluator.content_heatmap(model, progress=False)["ch"]

        def one_at_a_time():  # the reference protocol: each image alone, Grad-CAM by autograd
            total = 0.0
            for i in range(len(paths)):
                image = T.TF.resize(source.load(i), [args.short_side], antialias=True).unsqueeze(0)
                logits, features = model(T.normalize(image))
                cam = cgc.gradcam_pooled(logits, features, torch.tensor([i]))
                total += content_heatmap(cam, [boxes[i]], sizes[i])[0].item()
            result["single"] = 100 * total / len(paths)

        t_batched, t_single = alternate(batched, one_at_a_time, args.repeats)
    n = len(paths)
    return emit(bench="eval", arch=args.arch, images=n, short_side=args.short_side, batch=args.batch,
                batched_per_s=n / statistics.median(t_batched), single_per_s=n / statistics.median(t_single),
                batched_over_single=statistics.median(t_single) / statistics.median(t_batched),
                ch_batched=result["batched"], ch_single=result["single"], ch_abs_difference=abs(result["batched"] - result["single"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["step", "loss", "loader", "eval"])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch", type=int, help="per stream (step), heatmaps (loss), images per batch (eval)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16", "auto"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--short-side", type=int, default=448)
    parser.add_argument("--group", type=int, default=64, help="loss: InfoNCE group size (the released 64)")
    parser.add_argument("--variant", choices=["cgc", "floor"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    args.passthrough = [a for a in argv[1:]]
    defaults = dict(step=16, loss=128, loader=None, eval=16)
    args.batch = args.batch or defaults[args.what]
    return dict(step=bench_step, loss=bench_loss, loader=bench_loader, eval=bench_eval)[args.what](args)


if __name__ == "__main__":
    main()
