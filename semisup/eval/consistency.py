"""Explanation consistency under the training transforms: what CGC trains for, measured.

For a validation image x (its top-1 view: Resize + CenterCrop to S px), an explanation E of the
true class and K transforms T drawn as the training augmentation draws the CGC pair (a random
resized crop of the view, scale in [--crop-scale-min, 1], aspect in [3/4, 4/3], back to S px, and
a horizontal flip with probability 1/2; the flip always the one applied, whatever
--flip-protocol), the agreement between E(T(x)), the explanation of the transformed image, and
T(E(x)), the transformed explanation (the map cropped, resized and flipped as the CGC loss does,
``cgc.transform_cam``), both at S x S:

- ``consistency_r``: Pearson's correlation of the two maps' pixels (1: equal up to scale and
  offset; undefined, and left out, where either map is constant);
- ``consistency_iou``: the intersection over union of the two maps' top 15 % pixels (percent).

Both are means over images and draws. Draw k of image i is seeded by ``i * DRAWS + k``: the same
transforms for every checkpoint. A map computed from the image itself (its brightness) scores
r near 1; a map of noise scores near 0 (``tests/test_consistency.py``).

Worked example: a 64 px view, T the crop of rows 16-47 and columns 0-31 resized to 64 px and
flipped. E(x) is upsampled to 64 x 64, its rows 16-47 and columns 0-31 resampled to 64 x 64 and
mirrored: T(E(x)). E(T(x)) is upsampled from the augmented image's own map. If the model's map
follows the object, both put their mass where the object lies in the crop: r near 1, IoU high.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from semisup.data import transforms as T
from semisup.method import cgc

DRAWS = 4  # transforms per image
TOP_SHARE = 0.15  # of the pixels, for the IoU
BATCH = 32  # views a step (each with DRAWS transforms: 160 heatmaps)


def draw_transforms(index: int, size: int, scale: tuple[float, float]) -> list[tuple[int, int, int, int, bool]]:
    """The DRAWS (top, left, h, w, mirrored) transforms of validation image ``index`` on an S px view."""
    out = []
    for k in range(DRAWS):
        generator = torch.Generator().manual_seed(index * DRAWS + k)
        params, _ = T.draw_pair(size, scale, generator, "consistent")
        out.append(params)
    return out


def agreement(cam_of_transformed: torch.Tensor, transformed_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair of [N, S, S] maps: (Pearson r [N], NaN where a map is constant; top-15 % IoU [N] in [0, 1])."""
    a, b = cam_of_transformed.flatten(1).double(), transformed_cam.flatten(1).double()
    a_c, b_c = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = a_c.norm(dim=1) * b_c.norm(dim=1)
    r = (a_c * b_c).sum(1) / denominator
    r = torch.where(denominator > 1e-12, r, torch.full_like(r, float("nan")))
    k = max(1, round(TOP_SHARE * a.shape[1]))
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
    top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, dim=1).indices, True)
    iou = (top_a & top_b).sum(1).double() / (top_a | top_b).sum(1).double()
    return r, iou


def consistency_scores(images: torch.Tensor, classes: torch.Tensor, indices: list[int],
                       explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r [B * DRAWS], IoU [B * DRAWS]) of uint8 views [B, 3, S, S] of true ``classes`` [B] with
    their validation ``indices``; ``explain(uint8 images [N, 3, S, S], classes [N]) -> [N, h, w]``
    (one call for the views, one for all their transforms)."""
    size = images.shape[-1]
    draws = [draw_transforms(i, size, scale) for i in indices]
    augmented = torch.stack([T.apply_crop_flip(image, params, size)
                             for image, image_draws in zip(images.cpu(), draws) for params in image_draws])
    cams = explain(images, classes).float()  # [B, h, w]
    cams_aug = explain(augmented.to(images.device), classes.repeat_interleave(DRAWS, 0)).float()  # [B * DRAWS, h, w]
    boxes, flips = zip(*(T.pair_box(params, size) for image_draws in draws for params in image_draws))
    transformed = cgc.transform_cam(cams.repeat_interleave(DRAWS, 0), torch.stack(boxes), torch.stack(flips), size)
    of_transformed = F.interpolate(cams_aug.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return agreement(of_transformed, transformed)
