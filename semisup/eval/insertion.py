"""Insertion and deletion AUC (RISE's causal metrics), as the released CGC evaluation computes them.

Released: ``RISE/evaluate_auc_metrics.py``, ``RISE/evaluation.py`` (``CausalMetric``),
``RISE/utils.py`` and the vendored ``RISE/pytorch_grad_cam``. For each subset of ``subset``
validation images, in file order:

1. images ``Resize((S, S))`` (aspect not kept; PIL bilinear), normalised;
2. saliency: Grad-CAM of the ground-truth class at the last block (gradients pooled over space),
   computed after the script calls ``net.train()``: BatchNorm normalises batches of 100 with their
   own statistics, and every such batch moves the running statistics that the scoring then uses;
   each map is ``cv2.resize``d to S x S, minus its minimum, divided by (its maximum + 1e-8);
3. pixel order: ``np.flip(np.argsort(saliency))``, numpy's default sort (its order among ties);
4. scores: the eval-mode softmax probability of the class the model predicts on the full image.
   Insertion starts from the blurred image (an 11 x 11 Gaussian, sigma 5, as scipy's
   ``gaussian_filter`` of a dirac, ``conv2d`` with zero padding on the normalised image) and puts
   back ``step`` = 8 S pixels of the original after each score (29 scores at 224); deletion
   (RISE's ``CausalMetric('del')``) starts from the image and replaces pixels by zeros, the
   normalised mean colour, as RISE's own evaluation does;
5. AUC: the trapezoid rule over the subset's mean curve, normalised to [0, 1]; the result is the
   mean over subsets.

Here every step's image is built directly (pixels of rank < step x i from the finish image, the
rest from the start image), so many images and steps go through one forward: the same images as
the released loop's in-place copying, batched (tested equal to a literal transcription).
Departures, by name: ``saliency_mode='eval'`` (Grad-CAM with the running statistics, the model
left as it was) and ``order='stable'`` (a stable descending sort of the same maps on the model's
device, with bilinear ``F.interpolate`` instead of ``cv2.resize``).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from semisup.data import transforms as T
from semisup.method import explainers
from semisup.models.base import batchnorm_statistics_kept

log = logging.getLogger(__name__)

CAM_BATCH = 100  # the released script's loader batch: BatchNorm statistics of the saliency pass


@dataclass
class InsertionSettings:
    size: int = 224           # images are resized to size x size
    step: int | None = None   # pixels changed per step (default 8 * size, the released 224 * 8)
    subset: int = 5000        # images per subset (the released 50,000 in 10 subsets of 5,000)
    saliency_mode: str = "train"  # 'train' as released (BatchNorm on batch statistics, running ones moved) or 'eval'
    order: str = "released"   # 'released' (cv2 resize, numpy's argsort) or 'stable' (torch, on the device)
    batch: int = 256          # images (of all steps) per forward of the scoring
    explainer: str = "gradcam"  # the saliency's heatmap method (semisup.method.explainers)

    @property
    def pixel_step(self) -> int:
        return self.step or 8 * self.size


def blur_kernel(klen: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """[3, 3, k, k] the released ``gkern``: scipy's gaussian_filter of a dirac (reflect mode),
    on the diagonal (each channel blurred on its own)."""
    from scipy.ndimage import gaussian_filter
    dirac = np.zeros((klen, klen))
    dirac[klen // 2, klen // 2] = 1
    kernel = np.zeros((3, 3, klen, klen))
    for c in range(3):
        kernel[c, c] = gaussian_filter(dirac, sigma)
    return torch.from_numpy(kernel.astype("float32"))


def blur(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] normalised images -> blurred, ``conv2d`` with zero padding as released."""
    return F.conv2d(images, kernel.to(images.device, images.dtype), padding=kernel.shape[-1] // 2)


def auc(curve: np.ndarray) -> float:
    """RISE's ``auc``: trapezoid rule over equally spaced points, normalised to [0, 1]."""
    curve = np.asarray(curve, dtype=np.float64)
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / (curve.shape[0] - 1))


def pil_resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, size, size] by PIL's bilinear resize, as torchvision's
    ``Resize((size, size))`` does to the PIL images the released script loads."""
    from PIL import Image
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    return torch.from_numpy(np.asarray(pil.resize((size, size), Image.BILINEAR)).copy()).permute(2, 0, 1)


def saliency_order(
    model, images: torch.Tensor, labels: torch.Tensor, settings: InsertionSettings
) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM saliency of the ground-truth classes and the pixel order it gives.

    Args:
        model: a CamResNet, in the mode the caller chose (train: BatchNorm statistics of this batch,
            running statistics moved, as released).
        images: [B, 3, S, S] normalised; labels: [B] long.
    Returns:
        (saliency [B, S, S] float32 numpy in [0, 1], order [B, S*S] long on the images' device:
        pixel indices by decreasing saliency).
    """
    with torch.no_grad():
        logits, features = model(images)
        raw = _unwrap(model)
        # The released pass moves BatchNorm's running statistics once, by the forward above; an
        # explainer that forwards again (Score-CAM, a recomputed graph) must not move them more.
        with batchnorm_statistics_kept(raw):
            # Grad-CAM: = pytorch-grad-cam's (tested)
            cams = explainers.explain(settings.explainer, raw, images, logits, features, labels).float()
    size = settings.size
    if (
        settings.order == "released"
        and settings.explainer == "gradcam"
        and isinstance(getattr(raw, "fc", None), torch.nn.Linear)
    ):
        cams = torch.from_numpy(released_cams(features, raw.fc.weight, labels)).to(images.device)
    if settings.order == "stable":
        up = F.interpolate(cams.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
        low = up.flatten(1).amin(1).view(-1, 1, 1)
        up = up - low
        up = up / (up.flatten(1).amax(1).view(-1, 1, 1) + 1e-8)
        order = torch.argsort(up.flatten(1), dim=1, descending=True, stable=True)
        return up.cpu().numpy(), order
    saliency = []
    for cam in cams.cpu().numpy():  # the vendored pytorch_grad_cam's BaseCAM.forward
        img = _cv2_resize(cam, size)
        img = img - np.min(img)
        saliency.append(img / (np.max(img) + 1e-8))
    saliency = np.float32(saliency)
    order = np.flip(np.argsort(saliency.reshape(-1, size * size), axis=1), axis=-1).copy()
    return saliency, torch.from_numpy(order).to(images.device)


def released_cams(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """[B, h, w] float32: Grad-CAM in the vendored pytorch_grad_cam's own arithmetic (numpy
    float32): the gradient W_c / (h w) at every cell, its ``np.mean`` over the cells as the weights,
    ``(weights * A).sum`` over channels, ``np.maximum(., 0)``. The same map as the closed form up
    to rounding, but rounded as released: bilinear upsampling makes many pixels equal in exact
    arithmetic, and the rounding decides their order in the insertion game."""
    a = features.detach().float().cpu().numpy()
    h, w = a.shape[-2:]
    grads = (
        weight.detach().float().cpu()[classes.cpu()] / (h * w)
    ).numpy()  # [B, C]: d score / d A, as autograd divides
    weights = np.mean(np.broadcast_to(grads[:, :, None, None], a.shape), axis=(2, 3))
    return np.maximum((weights[:, :, None, None] * a).sum(axis=1), 0)


def _cv2_resize(cam: np.ndarray, size: int) -> np.ndarray:
    try:
        import cv2
    except ImportError:  # the same half-pixel bilinear map; rounding differs in the 7th digit
        return F.interpolate(
            torch.from_numpy(cam)[None, None], size=(size, size), mode="bilinear", align_corners=False
        )[0, 0].numpy()
    return cv2.resize(cam, (size, size))


def causal_curves(model, images: torch.Tensor, order: torch.Tensor, classes: torch.Tensor, mode: str, step: int,
                  substrate: torch.Tensor, batch: int = 256) -> np.ndarray:
    """The scores of ``CausalMetric(model, mode, step, substrate_fn).evaluate`` for a batch.

    Args:
        model: returns (logits, ...) for [N, 3, S, S]; scored in its current mode.
        images: [B, 3, S, S] normalised; order: [B, S*S] pixel indices by decreasing saliency;
        classes: [B] the class whose probability is scored; mode: 'ins' or 'del';
        substrate: [B, 3, S, S] what insertion starts from / deletion ends in.
    Returns:
        [n_steps + 1, B] float64 softmax probabilities, n_steps = ceil(S*S / step).
    """
    b, _, h, w = images.shape
    area = h * w
    n_steps = (area + step - 1) // step
    start, finish = (substrate, images) if mode == "ins" else (images, substrate) if mode == "del" else (None, None)
    if start is None:
        raise ValueError(f"mode must be 'ins' or 'del', got {mode!r}")
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(area, device=order.device).expand(b, -1))  # rank[b, p]: p's place in the order
    pairs = [(i, s) for s in range(n_steps + 1) for i in range(b)]
    scores = np.empty((n_steps + 1, b))
    with torch.no_grad():
        for first in range(0, len(pairs), batch):
            chunk = pairs[first:first + batch]
            index = torch.tensor([i for i, _ in chunk], device=images.device)
            steps = torch.tensor([s for _, s in chunk], device=images.device)
            changed = (rank[index] < (steps * step).view(-1, 1)).view(
                -1, 1, h, w
            )  # the pixels already moved at this step
            x = torch.where(changed, finish[index], start[index])
            probabilities = F.softmax(model(x)[0].float(), dim=1)
            picked = probabilities[torch.arange(len(chunk), device=x.device), classes[index]]
            for (i, s), p in zip(chunk, picked.double().cpu().tolist()):
                scores[s, i] = p
    return scores


def insertion_metrics(model, batches, settings: InsertionSettings, device: torch.device,
                      metrics=("iauc", "dauc")) -> dict:
    """IAUC / DAUC over validation batches (an iterable of (uint8 images [B, 3, S, S], labels
    [B]) in file order), as released: subsets of ``settings.subset`` images, each with its saliency
    pass (train-mode BatchNorm, moving running statistics, in batches of 100) before its scoring
    (eval mode); a copy of ``model`` is used, the caller's is left as it was.

    Returns {iauc, dauc (what was asked), insertion_images, insertion_curve, deletion_curve}."""
    net = copy.deepcopy(_unwrap(model)).to(device)
    subsets, pending_images, pending_labels = [], [], []  # subsets: per subset {metric: curves [steps, n]}
    run = lambda images, labels: subsets.append(_subset_curves(net, images, labels, settings, device, metrics))
    sizes = []
    for images, labels in batches:
        pending_images.append(images)
        pending_labels.append(labels)
        while sum(len(x) for x in pending_images) >= settings.subset:  # a loader batch may hold several subsets
            images, labels = torch.cat(pending_images), torch.cat(pending_labels)
            run(images[:settings.subset], labels[:settings.subset])
            sizes.append(settings.subset)
            pending_images, pending_labels = [images[settings.subset:]], [labels[settings.subset:]]
    rest = torch.cat(pending_images) if pending_images else torch.zeros(0)
    if len(rest):
        run(rest, torch.cat(pending_labels))
        sizes.append(len(rest))
    out = dict(insertion_images=int(sum(sizes)))
    for name in ("iauc", "dauc"):
        if name not in metrics or not subsets:
            continue
        # One curve per subset (the mean over its images), one AUC per subset, their mean.
        per_subset = [curves[name].mean(1) for curves in subsets]
        out[name] = 100 * float(np.mean([auc(c) for c in per_subset]))
        key = "insertion_curve" if name == "iauc" else "deletion_curve"
        out[key] = [round(v, 6) for v in np.mean(per_subset, axis=0).tolist()]
    return out


def _subset_curves(net, images: torch.Tensor, labels: torch.Tensor, settings: InsertionSettings, device: torch.device,
                   metrics) -> dict[str, np.ndarray]:
    """One subset: its saliency pass (``settings.saliency_mode``), then the insertion (blurred
    substrate) and deletion (zeros) curves of its images, {metric: [steps, n]}."""
    net.train(settings.saliency_mode == "train")
    orders = []
    for first in range(0, len(images), CAM_BATCH):
        x = T.normalize(images[first:first + CAM_BATCH].to(device))
        orders.append(saliency_order(net, x, labels[first:first + CAM_BATCH].to(device), settings)[1])
    net.eval()
    kernel, order_all = blur_kernel(), torch.cat(orders)
    parts = {name: [] for name in ("iauc", "dauc") if name in metrics}
    for first in range(0, len(images), settings.batch):
        x = T.normalize(images[first:first + settings.batch].to(device))
        order = order_all[first:first + settings.batch]
        with torch.no_grad():
            top = net(x)[0].argmax(1)
        if "iauc" in parts:
            blurred = blur(x, kernel)
            parts["iauc"].append(causal_curves(net, x, order, top, "ins", settings.pixel_step, blurred, settings.batch))
        if "dauc" in parts:
            zeros = torch.zeros_like(x)
            parts["dauc"].append(causal_curves(net, x, order, top, "del", settings.pixel_step, zeros, settings.batch))
    return {name: np.concatenate(curves, axis=1) for name, curves in parts.items()}


def _unwrap(model):
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class InsertionDataset(torch.utils.data.Dataset):
    """Validation images as the released insertion script loads them: ``Resize((S, S))`` of the
    whole image (PIL bilinear, aspect not kept). Items: (uint8 [3, S, S], label)."""

    def __init__(self, source, indices, size: int):
        self.source, self.indices, self.size = source, list(indices), size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        from semisup.data.datasets import _eval_load
        index = int(self.indices[i])
        image, _ = _eval_load(
            self.source, index
        )  # an unreadable image is a black one, a miss, as everywhere in evaluation
        return pil_resized(image, self.size), int(self.source.labels[index])
