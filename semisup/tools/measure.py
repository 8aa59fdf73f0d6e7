"""Timing helpers shared by the benchmarks (``bench``, ``e2e``): the machine's name, one JSON line
per result, alternate timing of two functions, and a step set up around random batches."""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
import torch

from semisup.files import write_atomic


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads"
    )


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


def step_setup(args):
    """A Trainer for ``args`` (arch, batch, image size, device, amp, channels-last, group size, BatchNorm
    geometry) around a stand-in dataset, and one labeled and one unlabeled batch of random uint8
    images on the device: what the step benchmarks time."""
    from semisup.config import make_config
    from semisup.data.datasets import DataBundle, EvalSet
    from semisup.distributed import Dist
    from semisup.train.trainer import Trainer

    device = torch.device(args.device)
    num_classes = 1000 if args.arch != "resnet_tiny" else 10
    cfg = make_config(
        dict(
            data="bench", arch=args.arch, batch_labeled=args.batch, batch_unlabeled=args.batch,
            image_size=args.image_size, amp=args.amp, channels_last=args.channels_last, device=args.device,
            compile=False, group_size=getattr(args, "group_size", 64),
            bn_geometry=getattr(args, "bn_geometry", "replicas"),
        )
    )
    bundle = DataBundle(
        [str(i) for i in range(num_classes)], None, np.arange(args.batch * 10), object(), np.arange(10),
        EvalSet(None, None), {},
    )
    trainer = Trainer(cfg, Dist(device=device), None, bundle)
    trainer.model.train()
    g = torch.Generator().manual_seed(0)
    image = lambda: torch.randint(
        0, 256, (args.batch, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g
    ).to(device)
    labeled = dict(image=image(), label=torch.randint(0, num_classes, (args.batch,), generator=g).to(device))
    boxes = torch.stack(
        [
            torch.full((args.batch,), 0.1), torch.full((args.batch,), 0.2), torch.full((args.batch,), 0.6),
            torch.full((args.batch,), 0.7),
        ],
        1,
    )
    unlabeled = dict(
        view=image(), aug=image(), box=boxes.to(device), flip=(torch.arange(args.batch) % 2 == 0).to(device)
    )
    return trainer, labeled, unlabeled


def sample_photos() -> list[np.ndarray]:
    """scikit-learn's two shipped photographs, [H, W, 3] uint8: photographic content without a download."""
    from sklearn.datasets import load_sample_images

    return [np.asarray(p) for p in load_sample_images().images]


def write_photo(path, photo: np.ndarray, w: int, h: int, rng: np.random.Generator, noise: float = 7.0) -> None:
    """A JPEG (quality 90) of ``w`` x ``h``: a random crop of ``photo`` at that aspect, resized,
    with sensor-like noise, so file sizes and decode work match real photos."""
    from PIL import Image

    ph, pw = photo.shape[:2]
    crop_w = int(rng.integers(pw // 2, pw + 1))
    crop_h = min(ph, int(crop_w * h / w))
    crop_w = int(crop_h * w / h)
    top, left = int(rng.integers(0, ph - crop_h + 1)), int(rng.integers(0, pw - crop_w + 1))
    image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w]).resize((w, h), Image.BICUBIC)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, size=(h, w, 3))
    picture = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    write_atomic(path, lambda tmp: picture.save(tmp, format="JPEG", quality=90))

