"""One training step of the method, as a function of its inputs: what the trainer and the benchmark run.

Limited labels: cross-entropy on the labeled crops, + lambda * the consistency of the heatmaps
of the unlabeled pair (the view and its random crop + flip) for the view's predicted class.
Full supervision (train_eval_cgc.py): CE summed over the crop, the view and the augmented view
with the true class, + lambda * the consistency on the labeled pair.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from semisup.data import transforms as T


@dataclass
class LabeledBatch:
    images: torch.Tensor  # [B, 3, H, W] normalised, on the device
    labels: torch.Tensor  # [B] long


@dataclass
class PairBatch:
    view: torch.Tensor  # [B, 3, H, W] the view, normalised
    aug: torch.Tensor  # [B, 3, H, W] its crop + flip, normalised
    boxes: torch.Tensor  # [B, 4] the crop inside the view, fractions (y0, x0, h, w)
    flips: torch.Tensor  # [B] bool, the heatmap of the view is mirrored
    labels: torch.Tensor | None  # [B] long; None for unlabeled images


@dataclass
class StepLosses:
    ce: torch.Tensor  # [] float32
    consistency: torch.Tensor  # [] float32 (0 when nothing is explained)
    loss: torch.Tensor  # [] the weighted sum, with its graph (backward on it)


@dataclass(frozen=True)
class StepSettings:
    """What a step needs besides the model and the batches."""
    ce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits [B, K], labels [B]) -> [] mean CE
    consistency: Callable[..., torch.Tensor]  # (cam_aug, cam [B, h, w], boxes, flips) -> []
    # (images [B, 3, S, S], logits [B, K], features [B, C, h, w], classes [B]) -> heatmaps [B, h, w];
    # None: the benchmark's floor (same forwards and backward, no heatmap)
    explain: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None
    uses_heatmaps: bool = True  # lambda > 0 in the config: the pair's graph is kept
    pair_on_labeled: bool = False  # full supervision: the pair is the labeled images, CE on all three forwards
    explain_label: bool = False  # --cam-class label: explain the true class (a diagnostic)
    autocast: Callable[[], AbstractContextManager] = nullcontext


def cgc_step(
    model: nn.Module, labeled: LabeledBatch, pair: PairBatch | None, cgc_weight: float, s: StepSettings
) -> StepLosses:
    """The losses of one step (no optimiser work); ``cgc_weight`` is lambda (``--lambda``) at this step."""
    with s.autocast():
        logits, _ = model(labeled.images)
        ce = s.ce(logits, labeled.labels)
        consistency = torch.zeros((), device=logits.device)
        if pair is not None:
            # At lambda 0 on unlabeled images (the CGC script run as its own baseline) the pair
            # only moves BatchNorm's running statistics: no graph is kept for it.
            with nullcontext() if s.uses_heatmaps or s.pair_on_labeled else torch.no_grad():
                view_logits, view_features = model(pair.view)
                aug_logits, aug_features = model(pair.aug)
            if s.pair_on_labeled:
                ce = ce + s.ce(view_logits, labeled.labels) + s.ce(aug_logits, labeled.labels)
            # The class is the model's own prediction on the view, chosen without gradient (the method).
            classes = pair.labels if s.explain_label else view_logits.detach().argmax(1)
            if s.explain is None:
                consistency = s.ce(view_logits, classes) + s.ce(aug_logits, classes)
            elif s.uses_heatmaps:
                cam = s.explain(pair.view, view_logits, view_features, classes)
                cam_aug = s.explain(pair.aug, aug_logits, aug_features, classes)
                consistency = s.consistency(cam_aug, cam, pair.boxes, pair.flips)
    loss = ce + cgc_weight * consistency
    return StepLosses(ce=ce.detach(), consistency=consistency.detach().float(), loss=loss)


def to_device(
    batch: dict, device: torch.device, channels_last: bool, pair: bool
) -> tuple[LabeledBatch | None, PairBatch | None]:
    """A loader's batch (uint8 images, CPU, pinned) as typed device batches: the labeled crop
    when the batch has one, the pair when ``pair``. Copies are asynchronous: a blocking copy
    here would sync the GPU."""
    move = lambda key: batch[key].to(device, non_blocking=True)
    images = lambda key: T.normalize(move(key), channels_last=channels_last)
    labels = move("label") if "label" in batch else None
    labeled = LabeledBatch(images("image"), labels) if "image" in batch else None
    if not pair:
        return labeled, None
    return labeled, PairBatch(images("view"), images("aug"), move("box"), move("flip"), labels)
