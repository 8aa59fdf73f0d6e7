"""Self-supervised pretraining of the demo model on the demo's unlabeled training images: the
demo's stand-in for SwAV, shipped as ``pretrained/demo_swav_resnet_tiny.pth``.

    semisup-pretrain --steps 1800               # into runs/pretrain/ (a trial)
    semisup-pretrain --steps 1800 --out pretrained/demo_swav_resnet_tiny.pth --replace-shipped   # remake the start

Two augmented views per image (random resized crop, flip, colour jitter with hue rotation,
20 % grayscale, as SwAV and SimCLR augment), a projection head, and one of two objectives:

- ``contrastive`` (default): InfoNCE between the two views of each image against the other
  2B - 2 views of the batch (SimCLR's NT-Xent, temperature 0.2).
- ``swav``: SwAV's swapped prediction of Sinkhorn-Knopp codes over learned prototypes.

On this dataset, with the CPU minutes a demo can spend, only the contrastive objective beat
random features (docs/getting-started.md, "The demo's self-supervised start": SwAV's swapped prediction stayed
below a random trunk's kNN for the 500-1,500 steps tried, with and without hue jitter and a
queue); SwAV is kept for comparison. Either way the file has the key layout of the public SwAV
checkpoints (``module.`` prefix, ``projection_head.*``; ``prototypes.*`` for swav), so
``--pretrained`` loads it through the same path as the real ones. Beside it goes
``<file>.json``: its sha256 (checked whenever the file is loaded), the command that made it and
the kNN top-1 of its frozen features against a random trunk's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from semisup import checkpoint as ckpt
from semisup.config import DEMO_START
from semisup.data import transforms as T
from semisup.data.datasets import ArraySource, StreamSampler, TrainDataset
from semisup.data.demo import VERSION, load_demo
from semisup.errors import Parser, UsageError, UserError, cli
from semisup.files import write_text_atomic
from semisup.models.base import build_model

log = logging.getLogger(__name__)

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rotate_hue(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float [B, 3, H, W] images by ``angles`` [B] radians (a rotation of the
    chroma plane in YIQ space; brightness is kept)."""
    cos, sin = angles.cos(), angles.sin()
    rotation = torch.zeros(len(angles), 3, 3, device=images.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    to_yiq = _RGB_TO_YIQ.to(images.device)
    matrices = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", matrices, images)


def colour_jitter(
    images: torch.Tensor, generator: torch.Generator, strength: float = 0.8, hue: float = 0.4
) -> torch.Tensor:
    """Batched brightness, contrast, saturation jitter (factors 1 +- strength), a hue rotation
    of up to +- hue x 180 degrees, and 20 % grayscale, on float [B, 3, H, W] in [0, 1]. Without
    the hue rotation two views share their colours, and matching colours solves the task: the
    objectives stayed below random features until it was added."""
    b = images.shape[0]
    rand = lambda: (1 + strength * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)).to(images.device)
    luma = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    images = images * rand()
    mean = images.mean((1, 2, 3), keepdim=True)
    images = (images - mean) * rand() + mean
    gray = (images * luma).sum(1, keepdim=True)
    images = gray + (images - gray) * rand()
    images = rotate_hue(images, (2 * torch.rand(b, generator=generator) - 1).to(images.device) * math.pi * hue)
    gray = (images * luma).sum(1, keepdim=True)
    to_gray = (torch.rand(b, 1, 1, 1, generator=generator) < 0.2).to(images.device)
    return torch.where(to_gray, gray.expand_as(images), images).clamp(0, 1)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft codes [B, K] from prototype scores [B, K] (SwAV's Sinkhorn-Knopp)."""
    q = torch.exp((scores - scores.max()) / epsilon).T  # [K, B]
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).T


def paired_views(dataset: TrainDataset, sampler: StreamSampler):
    """Yield (indices [B], view_a [B, 3, S, S] uint8, view_b [B, 3, S, S] uint8): two
    augmentations of the same images. Both views must come from one sampler: two samplers
    would pair unrelated images, and swapped prediction then has nothing to learn (it
    collapsed to the uniform loss log K within 100 steps when this was wrong)."""
    for batch in sampler:
        indices = torch.tensor([index for index, _ in batch])
        views = [
            torch.stack([dataset[(index, (2 * seed + view) % 2**63)]["image"] for index, seed in batch])
            for view in (0, 1)
        ]
        yield indices, *views


class SwAVHead(nn.Module):
    """SwAV's projection head (and, for the swav objective, its prototypes)."""

    def __init__(self, width: int, hidden: int = 256, dim: int = 64, prototypes: int = 0):
        super().__init__()
        self.projection_head = nn.Sequential(
            nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
        )
        self.prototypes = nn.Linear(dim, prototypes, bias=False) if prototypes else None

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, C] pooled features -> [B, dim] unit vectors."""
        return F.normalize(self.projection_head(pooled), dim=1)


def contrastive_loss(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of [2B, D] unit vectors, rows i and i + B being the two views of one image."""
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # a view is not its own positive or negative
    n = len(z) // 2
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(similarity, positives)


def swapped_prediction_loss(head: SwAVHead, z: list[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SwAV: each view predicts the other view's Sinkhorn code."""
    scores = [head.prototypes(zi) for zi in z]
    codes = [sinkhorn(s.detach()) for s in scores]
    return -0.5 * sum((codes[1 - i] * F.log_softmax(scores[i] / temperature, dim=1)).sum(1).mean() for i in range(2))


@torch.no_grad()
def knn_probe(model: nn.Module, demo_cache: str | None, fraction: float = 0.1) -> float:
    """kNN top-1 (percent) of frozen pooled layer4 features on the demo's validation split, with
    10 % of the training split (stratified, labels used only here) as the memory bank."""
    from semisup.data.datasets import _demo_labeled_indices
    from semisup.eval.knn import knn_classify
    demo = load_demo(demo_cache)
    was_training = model.training
    model.eval()
    embed = lambda images: torch.cat(
        [
            F.normalize(
                model.features(T.normalize(torch.from_numpy(images[i : i + 256]).permute(0, 3, 1, 2))).mean((2, 3)),
                dim=1,
            )
            for i in range(0, len(images), 256)
        ]
    )
    bank = _demo_labeled_indices(demo.train.labels, fraction)
    predictions = knn_classify(embed(demo.train.images[bank]), torch.from_numpy(demo.train.labels[bank]),
                               embed(demo.val.images), k=20, num_classes=10)
    model.train(was_training)
    return float(100 * (predictions.numpy() == demo.val.labels).mean())


def pretrain(
    steps: int, batch: int, lr: float, seed: int, demo_cache: str | None, objective: str = "contrastive",
    temperature: float = 0.2, crop_scale_min: float = 0.3, probe_every: int = 0,
) -> tuple[nn.Module, SwAVHead, list]:
    """Returns (model, head, probes): probes are (step, kNN top-1) every ``probe_every`` steps."""
    torch.manual_seed(seed)
    demo = load_demo(demo_cache)
    source = ArraySource(demo.train.images, demo.train.labels)  # labels are never read
    size = demo.train.images.shape[1]
    dataset = TrainDataset(source, np.arange(len(source)), size, size, crop_scale_min, crop=True, pair=False)
    pairs = paired_views(dataset, StreamSampler(len(dataset), batch, seed, stream=10))
    model = build_model("resnet_tiny", num_classes=1)
    head = SwAVHead(model.fc.in_features, prototypes=30 if objective == "swav" else 0)
    params = model.trunk_parameters() + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    probes, start, warmup = [], time.time(), max(1, min(100, steps // 10))
    for step in range(steps):
        for group in optimizer.param_groups:  # linear warm-up, then cosine to zero
            group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        _, *views = next(pairs)
        pooled = [
            model.features(T.normalize_unit(colour_jitter(v.float() / 255, generator))).mean((2, 3)) for v in views
        ]
        z = [head.embed(p) for p in pooled]
        if objective == "swav":
            with torch.no_grad():
                head.prototypes.weight.copy_(F.normalize(head.prototypes.weight, dim=1))
            loss = swapped_prediction_loss(head, z)
        else:
            loss = contrastive_loss(torch.cat(z), temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if probe_every and ((step + 1) % probe_every == 0 or step + 1 == steps):
            probes.append((step + 1, knn_probe(model, demo_cache)))
            log.info(
                "step %d/%d  loss %.3f  kNN top-1 %.2f %%  %.0f s", step + 1, steps, loss.item(), probes[-1][1],
                time.time() - start,
            )
    return model, head, probes


def save_swav_layout(model: nn.Module, head: SwAVHead, path: Path) -> None:
    weights = model.state_dict()
    state = {f"module.{k}": weights[k] for k in model.trunk_keys()}
    state.update({f"module.{k}": v for k, v in head.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save_atomic(state, path)


def at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def check_args(args) -> None:
    """Numbers no pretraining can run with, and an --out the repository ships: one line each."""
    rules = dict(lr=(lambda v: v > 0, "> 0"), temperature=(lambda v: v > 0, "> 0"),
                 crop_scale_min=(lambda v: 0 < v <= 1, "in (0, 1]"), probe_every=(lambda v: v >= 0, ">= 0"),
                 threads=(lambda v: v is None or v >= 1, ">= 1"), seed=(lambda v: 0 <= v < 2**32, "in [0, 2**32)"))
    for key, (test, what) in rules.items():
        value = getattr(args, key)
        if (isinstance(value, float) and not math.isfinite(value)) or not test(value):
            raise UsageError(f"--{key.replace('_', '-')}: must be {what} and finite, got {value}")
    if not args.replace_shipped and shipped(args.out):
        raise UsageError(f"--out {args.out}: a file the repository ships (tracked by git); a trial would replace it. "
                         "Write elsewhere (the default runs/pretrain/), or pass --replace-shipped to remake it")


def shipped(path: Path) -> bool:
    """Whether ``path`` is a file of the project's checkout that git tracks (or the demo's start)."""
    from semisup.config import PROJECT_ROOT
    target = Path(path).resolve()
    if target == Path(DEMO_START).resolve():
        return True
    if not target.is_relative_to(PROJECT_ROOT.resolve()):
        return False
    try:
        return subprocess.run(["git", "ls-files", "--error-unmatch", str(target)], cwd=PROJECT_ROOT,
                              capture_output=True).returncode == 0
    except OSError:
        return False


@cli
def main(argv=None) -> int:
    parser = Parser(prog="semisup-pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=at_least_two, default=3000)
    parser.add_argument(
        "--batch", type=at_least_two, default=128, help="images per step (at least 2: the others are the negatives)"
    )
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--objective", choices=["contrastive", "swav"], default="contrastive")
    parser.add_argument("--temperature", type=float, default=0.2, help="contrastive objective's temperature")
    parser.add_argument("--crop-scale-min", type=float, default=0.3, help="lower bound of the views' crop area")
    parser.add_argument(
        "--probe-every", type=int, default=500, help="kNN probe every N steps (0: only before and after)"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--demo-cache")
    parser.add_argument("--out", type=Path, default=Path("runs") / "pretrain" / Path(DEMO_START).name,
                        help="where the weights and their manifest go (default runs/pretrain/; the shipped start in "
                             "pretrained/ is replaced only with --replace-shipped)")
    parser.add_argument("--replace-shipped", action="store_true",
                        help="allow --out to replace a file the repository ships (the demo's start): its maintainers")
    args = parser.parse_args(argv)
    check_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    before = knn_probe(build_model("resnet_tiny", 1), args.demo_cache)
    log.info("random trunk: kNN top-1 %.2f %%", before)
    start = time.time()
    model, head, probes = pretrain(args.steps, args.batch, args.lr, args.seed, args.demo_cache, args.objective,
                                   args.temperature, args.crop_scale_min, args.probe_every)
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UserError(f"the pretraining diverged: non-finite weights ({bad[0]}, ...) after {args.steps} steps; "
                        f"nothing was written; lower --lr (it was {args.lr:g})")
    after = probes[-1][1] if probes else knn_probe(model, args.demo_cache)
    save_swav_layout(model, head, args.out)
    command = "semisup-pretrain " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    manifest = dict(
        sha256=hashlib.sha256(args.out.read_bytes()).hexdigest(), command=command.strip(),
        what=f"{args.objective} self-supervised pretraining on the demo's unlabeled images (demo v{VERSION})",
        demo_version=VERSION, steps=args.steps, batch=args.batch, seconds=round(time.time() - start),
        knn_top1_random_trunk=round(before, 2), knn_top1_pretrained=round(after, 2), knn_probes=probes,
        torch=torch.__version__,
    )
    write_text_atomic(args.out.with_name(args.out.name + ".json"), json.dumps(manifest, indent=1) + "\n")
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB, sha256 {manifest['sha256'][:16]}...) and its"
        f" manifest; kNN top-1 on the demo validation split (10 % labeled bank): {after:.2f} % pretrained, {before:.2f}"
        f" % random trunk ({after / max(before, 1e-9):.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
