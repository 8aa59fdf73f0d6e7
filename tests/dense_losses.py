"""The CGC and GCC losses on materialised S x S heatmaps: the reference the factored losses of
``semisup.method.cgc`` are tested against (the training never builds these maps)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from semisup.method.cgc import MASK_EPS, _group_ids, float32, transform_cam


def normalized_heatmaps(cam: torch.Tensor, size: int) -> torch.Tensor:
    """[B, h, w] -> [B, size, size]: bilinear upsampling, scaled to sum 1, plus ``MASK_EPS``
    (the released ``compute_gradcam_mask``)."""
    up = F.interpolate(cam.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    return up / (up.sum((1, 2), keepdim=True) + MASK_EPS) + MASK_EPS


@float32
def cgc_loss_dense(
    cam_aug: torch.Tensor,
    cam: torch.Tensor,
    boxes: torch.Tensor,
    flips: torch.Tensor,
    temperature: float = 0.5,
    size: int = 224,
    group_size: int | None = None,
    negatives: str = "aug",
) -> torch.Tensor:
    """:func:`semisup.method.cgc.cgc_loss` on materialised S x S masks ."""
    aug = F.normalize(normalized_heatmaps(cam_aug, size).flatten(1), dim=1)
    target = F.normalize(transform_cam(normalized_heatmaps(cam, size), boxes, flips, size).flatten(1), dim=1)
    b = cam.shape[0]
    groups, _ = _group_ids(b, group_size, cam.device)
    losses = []
    for g in groups.unique():
        rows = (groups == g).nonzero().flatten()
        a, t = aug[rows], target[rows]
        if negatives == "aug":
            neg = (a @ a.T)[~torch.eye(len(rows), dtype=torch.bool, device=cam.device)].view(len(rows), -1)
            logits = torch.cat([(a * t).sum(1, keepdim=True), neg], 1) / temperature
            labels = torch.zeros(len(rows), dtype=torch.long, device=cam.device)
        else:
            logits, labels = t @ a.T / temperature, torch.arange(len(rows), device=cam.device)
        losses.append(F.cross_entropy(logits, labels))
    return torch.stack(losses).mean()


@float32
def gcc_l2_loss_dense(cam_aug, cam, boxes, flips, size: int = 224) -> torch.Tensor:
    """:func:`semisup.method.cgc.gcc_l2_loss` on materialised S x S masks (reference for tests)."""
    aug = F.normalize(normalized_heatmaps(cam_aug, size).flatten(1), dim=1)
    target = F.normalize(transform_cam(normalized_heatmaps(cam, size), boxes, flips, size).flatten(1), dim=1)
    return F.mse_loss(aug, target)
