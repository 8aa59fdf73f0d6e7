"""Differentiable Grad-CAM, the heatmap transform and the CGC / GCC consistency losses.

Shapes: B = batch, C = channels of the last conv block, h x w = its spatial size,
S = the size heatmaps are upsampled to before they are compared (224 by default).

The loss compares bilinear upsamplings of h x w maps after an axis-aligned crop, resize
and mirror. Every one of those steps is linear and separable, so the S x S heatmaps are
never materialised: each comparison is computed exactly from h x h and w x w factors
(see ``_separable_factors``). ``cgc_loss_dense`` is the literal, materialised version; the
tests check the two agree.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_EPS = 1e-12


def _float32(fn):
    """Run ``fn`` with autocast off: heatmaps and the loss stay float32 under mixed precision
    (bf16 heatmaps lose the small differences the loss is about)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)
    return wrapper


@_float32
def gradcam(logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM with the gradient's spatial layout kept (element-wise, no pooling).

    g = relu(sum_k dS_c/dA_k * A_k), computed by autograd with ``create_graph=True`` so
    the heatmap itself can be trained.

    Args:
        logits: [B, K] class scores; ``features`` must be part of their graph.
        features: [B, C, h, w] activations of the last conv block.
        classes: [B] long, the class whose score is explained.
    Returns:
        [B, h, w] float32, non-negative, differentiable.
    """
    # Samples are independent at this point of the graph (after the last BatchNorm), so the
    # gradient of the summed scores w.r.t. A_i is exactly dS_{c_i}(x_i)/dA_i.
    score = logits.float().gather(1, classes.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, features, create_graph=True)
    return F.relu((grads.float() * features.float()).sum(1))


@_float32
def gradcam_pooled(logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Standard Grad-CAM (gradients averaged over space), as used for Content Heatmap.

    Args/returns as :func:`gradcam`; not kept differentiable (evaluation only).
    """
    score = logits.float().gather(1, classes.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, features)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * features.float()).sum(1)).detach()


@_float32
def linear_head_cam(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM in closed form for a global-average-pool + linear head.

    There dS_c/dA = W_c / (h*w) at every position, so both Grad-CAM variants equal the
    class activation map scaled by 1/(h*w). Same result as :func:`gradcam` (tested), without
    a second backward through the network.

    Args:
        features: [B, C, h, w]; weight: [K, C] the linear layer's weight; classes: [B] long.
    Returns:
        [B, h, w] float32, non-negative, differentiable w.r.t. features and weight.
    """
    h, w = features.shape[-2:]
    class_weights = weight.float()[classes]  # [B, C]; indexing keeps the gather on the device
    return F.relu(torch.einsum("bchw,bc->bhw", features.float(), class_weights) / (h * w))


@_float32
def transform_cam(cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Apply a crop + resize + optional mirror to a batch of heatmaps, in one batched op.

    Args:
        cam: [B, H, W] heatmaps of the untransformed view.
        boxes: [B, 4] float (top, left, height, width) as fractions of the view.
        flips: [B] bool, mirror horizontally after cropping.
        size: output side length.
    Returns:
        [B, size, size], what the same transform does to an image, bilinear, differentiable.
    """
    theta = _crop_affine(boxes.to(cam.device, torch.float32), flips.to(cam.device))
    grid = F.affine_grid(theta, [cam.shape[0], 1, size, size], align_corners=False)
    # Border padding: a box touching the view's edge samples the edge pixel, like a crop.
    out = F.grid_sample(cam.float().unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.squeeze(1)


def _crop_affine(boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """[B, 2, 3] affine maps from output to input normalised coordinates."""
    top, left, height, width = boxes.unbind(1)
    sign = 1.0 - 2.0 * flips.float()
    theta = torch.zeros(boxes.shape[0], 2, 3, device=boxes.device, dtype=boxes.dtype)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = 2 * left + width - 1
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2 * top + height - 1
    return theta


def _upsample_matrix(n: int, size: int, device: torch.device) -> torch.Tensor:
    """[size, n] matrix U with U @ v == F.interpolate(v, size, mode='linear') for v of length n."""
    basis = torch.eye(n, device=device).unsqueeze(1)  # [n, 1, n]
    return F.interpolate(basis, size=size, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


def _crop_matrix(upsample: torch.Tensor, start: torch.Tensor, length: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``upsample`` resampled like ``grid_sample`` does along one axis of a crop.

    Args:
        upsample: [S, n] the axis' upsampling matrix.
        start, length: [B] crop start and length as fractions of the axis.
        flips: [B] bool or None.
    Returns:
        [B, S, n]: A_b with (crop_b o upsample) v == A_b @ v.
    """
    size = upsample.shape[0]
    out_pos = torch.arange(size, device=upsample.device, dtype=torch.float32) + 0.5  # [S]
    if flips is not None:
        out_pos = torch.where(flips.view(-1, 1), size - out_pos, out_pos)  # [B, S]
    # Pixel coordinate of each output sample in the upsampled axis (align_corners=False).
    pos = (start.view(-1, 1) * size + out_pos * length.view(-1, 1)) - 0.5
    pos = pos.clamp(0, size - 1)  # border padding
    lower = pos.floor()
    frac = (pos - lower).unsqueeze(-1)
    lower = lower.long()
    upper = (lower + 1).clamp(max=size - 1)
    return upsample[lower] * (1 - frac) + upsample[upper] * frac


def _separable_factors(cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int):
    """Inner products, norms and sums of the upsampled / transformed heatmaps, exactly.

    With U = Uy (.) Ux the upsampling and A_b = Ay_b (.) Ax_b the crop of the upsampled view map:
      target_b = Ay_b g_b Ax_b^T,    aug_k = Uy a_k Ux^T   (both S x S, never built)
      <target_b, aug_k> = <(Uy^T Ay_b) g_b (Ux^T Ax_b)^T, a_k>    -> h x w numbers each.
    ``cam_aug`` may hold more rows (N) than ``cam`` (B): negatives gathered from other processes.
    Returns dict of [B, N] ``inner``, [B] ``target_sq``, ``target_sum`` and [N] ``aug_sq``, ``aug_sum``.
    """
    cam_aug = cam_aug.float()
    cam = cam.float()
    h, w = cam.shape[-2:]
    boxes = boxes.to(cam.device, torch.float32)
    up_y = _upsample_matrix(h, size, cam.device)  # [S, h]
    up_x = _upsample_matrix(w, size, cam.device)  # [S, w]
    crop_y = _crop_matrix(up_y, boxes[:, 0], boxes[:, 2], None)  # [B, S, h]
    crop_x = _crop_matrix(up_x, boxes[:, 1], boxes[:, 3], flips.to(cam.device))  # [B, S, w]

    mixed_y = torch.einsum("sh,bsj->bhj", up_y, crop_y)  # Uy^T Ay_b  [B, h, h]
    mixed_x = torch.einsum("sw,bsj->bwj", up_x, crop_x)  # Ux^T Ax_b  [B, w, w]
    projected = mixed_y @ cam @ mixed_x.transpose(1, 2)  # [B, h, w]
    inner = projected.flatten(1) @ cam_aug.flatten(1).T  # [B(target), B(aug)]

    gram_crop_y = crop_y.transpose(1, 2) @ crop_y  # [B, h, h]
    gram_crop_x = crop_x.transpose(1, 2) @ crop_x  # [B, w, w]
    target_sq = (gram_crop_y @ cam @ gram_crop_x * cam).sum((1, 2))
    aug_sq = ((up_y.T @ up_y) @ cam_aug @ (up_x.T @ up_x) * cam_aug).sum((1, 2))
    target_sum = torch.einsum("bh,bhw,bw->b", crop_y.sum(1), cam, crop_x.sum(1))
    aug_sum = torch.einsum("h,bhw,w->b", up_y.sum(0), cam_aug, up_x.sum(0))
    return dict(inner=inner, target_sq=target_sq, aug_sq=aug_sq, target_sum=target_sum, aug_sum=aug_sum)


@_float32
def cgc_loss(cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
             temperature: float = 0.5, size: int = 224) -> torch.Tensor:
    """Contrastive Grad-CAM Consistency (InfoNCE between heatmaps).

    The anchor is T(g(x_i)) (the view's heatmap, transformed), its positive g(T(x_i)) and its
    negatives g(T(x_k)), k != i, all upsampled to ``size`` and compared by cosine similarity.
    Normalising each map to sum 1 first (as the method states) does not change a cosine.

    Args:
        cam_aug: [B, h, w] raw heatmaps of the augmented views.
        cam: [B, h, w] raw heatmaps of the views.
        boxes: [B, 4] (top, left, height, width) fractions; flips: [B] bool.
        temperature: softmax temperature of the InfoNCE logits.
        size: side the heatmaps are upsampled to.
    Returns:
        scalar float32 loss; gradients flow into both heatmaps.
    """
    return _cgc_logits_loss(cam_aug, cam, boxes, flips, temperature, size, candidates=cam_aug, offset=0)


@_float32
def cgc_loss_global(cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                    all_cam_aug: torch.Tensor, offset: int, temperature: float = 0.5, size: int = 224) -> torch.Tensor:
    """CGC loss whose negatives are the augmented heatmaps of every process.

    Args:
        all_cam_aug: [N, h, w] gathered augmented heatmaps (with gradient), where rows
            ``offset : offset + B`` are this process' ``cam_aug``.
    """
    return _cgc_logits_loss(cam_aug, cam, boxes, flips, temperature, size, candidates=all_cam_aug, offset=offset)


def _cgc_logits_loss(cam_aug, cam, boxes, flips, temperature, size, candidates, offset):
    factors = _separable_factors(candidates, cam, boxes, flips, size)
    up_sq = factors["aug_sq"]
    cosine = factors["inner"] / (factors["target_sq"].clamp_min(_EPS).sqrt().unsqueeze(1)
                                 * up_sq.clamp_min(_EPS).sqrt().unsqueeze(0))
    labels = torch.arange(cam.shape[0], device=cam.device) + offset
    return F.cross_entropy(cosine / temperature, labels)


@_float32
def gcc_l2_loss(cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The earlier L2 "GCC" baseline: no negatives, squared error between T(g(x)) and g(T(x)).

    Each upsampled map is scaled to mean 1 over its S x S pixels (sum-to-1 times S^2, so the
    loss does not depend on ``size``); the loss is the per-pixel mean squared difference,
    averaged over the batch. Args as :func:`cgc_loss`.
    """
    f = _separable_factors(cam_aug, cam, boxes, flips, size)
    pixels = size * size
    t_sum = f["target_sum"].clamp_min(_EPS)
    a_sum = f["aug_sum"].clamp_min(_EPS)
    # ||t/mean(t) - a/mean(a)||^2 / S^2, expanded into the exact factors.
    sq = f["target_sq"] / t_sum**2 + f["aug_sq"] / a_sum**2 - 2 * f["inner"].diagonal() / (t_sum * a_sum)
    return (sq * pixels).mean()


def normalized_heatmaps(cam: torch.Tensor, size: int) -> torch.Tensor:
    """[B, h, w] -> [B, size, size] bilinear upsampling, each map scaled to sum 1."""
    up = F.interpolate(cam.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    return up / up.sum((1, 2), keepdim=True).clamp_min(_EPS)


@_float32
def cgc_loss_dense(cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
                   temperature: float = 0.5, size: int = 224) -> torch.Tensor:
    """The CGC loss computed literally on S x S maps (reference for tests and benchmarks)."""
    aug = normalized_heatmaps(cam_aug, size)
    target = transform_cam(normalized_heatmaps(cam, size), boxes, flips, size)
    aug = F.normalize(aug.flatten(1), dim=1, eps=_EPS)
    target = F.normalize(target.flatten(1), dim=1, eps=_EPS)
    logits = target @ aug.T / temperature
    return F.cross_entropy(logits, torch.arange(cam.shape[0], device=cam.device))


@_float32
def gcc_l2_loss_dense(cam_aug, cam, boxes, flips, size: int = 224) -> torch.Tensor:
    """:func:`gcc_l2_loss` computed literally on S x S maps (reference for tests)."""
    aug = F.interpolate(cam_aug.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    up = F.interpolate(cam.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
    target = transform_cam(up, boxes, flips, size)
    aug = aug / aug.mean((1, 2), keepdim=True).clamp_min(_EPS)
    target = target / target.mean((1, 2), keepdim=True).clamp_min(_EPS)
    return ((aug - target) ** 2).mean()
