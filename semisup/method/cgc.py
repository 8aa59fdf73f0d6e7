"""Differentiable Grad-CAM, the heatmap transform and the CGC / GCC consistency losses.

Shapes: B = batch, C = channels of the last conv block, h x w = its spatial size,
S = the size heatmaps are upsampled to before they are compared (224 by default).

The losses follow the released code (UCDvision/CGC, ``models/utils.py`` and the ``_forward``
of ``models/swav_resnet_cgc.py``): each heatmap is upsampled to S x S, normalised to sum 1
plus 1e-8 per pixel, the view's map is cropped with integer pixels, resized back to S and
mirrored (T), both maps are L2-normalised, and InfoNCE takes the augmented view's map as the
anchor, T(view map) as its positive and the other augmented maps of its group as negatives.

Every one of those steps is linear and separable, so the S x S heatmaps are never built:
each inner product is computed exactly from h x h and w x w factors (``_pair_factors``).
``tests/dense_losses.py`` holds the same losses on materialised S x S maps; the tests check both
against a literal transcription of the released per-sample loop.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def float32(fn):
    """Run ``fn`` with autocast off: heatmaps and the loss stay float32 under mixed precision
    (bf16 heatmaps lose the small differences the loss is about)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return fn(*args, **kwargs)
    return wrapper


@float32
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


@float32
def gradcam_pooled(logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Standard Grad-CAM (gradients averaged over space), as used for Content Heatmap.

    Args/returns as :func:`gradcam`; not kept differentiable (evaluation only).
    """
    score = logits.float().gather(1, classes.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, features)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * features.float()).sum(1)).detach()


@float32
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


# Added to every normalised heatmap pixel by the released code (``compute_gradcam_mask``).
MASK_EPS = 1e-8


def _axis_resample(
    base: torch.Tensor, out_size: int, start: torch.Tensor, length: torch.Tensor, flips: torch.Tensor | None
) -> torch.Tensor:
    """[B, out_size, m]: the rows of ``base`` [n_in, m] resampled by a crop + bilinear resize
    (+ mirror) along an axis of n_in pixels. With ``base`` the identity these are the resampling
    weights; with an upsampling matrix, the crop composed with the upsampling.

    The crop covers ``[start, start + length)`` (fractions of the axis); resizing follows
    ``F.interpolate(crop, out_size, mode='bilinear', align_corners=False)`` exactly: sample
    positions are clamped to the crop's own first and last pixel, as interpolating the cut-out
    crop does. With integer-pixel crops this equals slicing then interpolating (tested).
    """
    n_in = base.shape[0]
    k = torch.arange(out_size, device=base.device, dtype=torch.float32) + 0.5  # [out]
    if flips is not None:  # mirror after resizing: output k reads position out_size - 1 - k
        k = torch.where(flips.view(-1, 1), out_size - k, k)  # [B, out]
    first = start.view(-1, 1) * n_in
    last = (start + length).view(-1, 1) * n_in - 1
    pos = first + k * (length.view(-1, 1) * n_in / out_size) - 0.5
    pos = torch.minimum(torch.maximum(pos, first), last).clamp(0, n_in - 1)
    lower = pos.floor()
    frac = (pos - lower).unsqueeze(-1)
    lower = lower.long()
    upper = (lower + 1).clamp(max=n_in - 1)
    return base[lower] * (1 - frac) + base[upper] * frac


@functools.lru_cache(maxsize=32)
def _upsample_matrix(n: int, size: int, device: torch.device) -> torch.Tensor:
    """[size, n] matrix U with U @ v == F.interpolate(v, size, mode='linear') for v of length n
    (cached: the same few shapes every step)."""
    basis = torch.eye(n, device=device).unsqueeze(1)  # [n, 1, n]
    return F.interpolate(basis, size=size, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


@float32
def transform_cam(cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Apply the CGC transform T (crop + bilinear resize + optional mirror) to a batch of maps.

    Args:
        cam: [B, H, W] maps of the untransformed view.
        boxes: [B, 4] float (top, left, height, width) as fractions of the view.
        flips: [B] bool, mirror horizontally after resizing.
        size: output side length.
    Returns:
        [B, size, size]: what the released ``perform_gradcam_aug`` does to an H x W map
        (slice the crop, ``F.interpolate`` bilinear, flip), differentiable.
    """
    boxes = boxes.to(cam.device, torch.float32)
    eye_h, eye_w = torch.eye(cam.shape[-2], device=cam.device), torch.eye(cam.shape[-1], device=cam.device)
    rows = _axis_resample(eye_h, size, boxes[:, 0], boxes[:, 2], None)  # [B, S, H]
    cols = _axis_resample(eye_w, size, boxes[:, 1], boxes[:, 3], flips.to(cam.device))  # [B, S, W]
    return rows @ cam.float() @ cols.transpose(1, 2)


def _mass_normalised(cam: torch.Tensor, up_y: torch.Tensor, up_x: torch.Tensor) -> torch.Tensor:
    """[B, h, w] maps scaled so their S x S upsampling sums to s / (s + 1e-8), s its raw sum.

    Equal to the released ``up / (up.sum() + eps)`` but computed on the h x w map (upsampling
    is linear) and after dividing by the map's maximum, so huge but finite heatmaps neither
    overflow nor lose the small differences the loss is about."""
    scale = cam.detach().flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1)
    scaled = cam / scale
    mass = torch.einsum("h,bhw,w->b", up_y.sum(0), scaled, up_x.sum(0)).view(-1, 1, 1)
    return scaled / (mass + MASK_EPS / scale)


def _pair_factors(cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int,
                  local: slice) -> dict[str, torch.Tensor]:
    """Inner products of the released normalised S x S masks, exactly, without building them.

    With n(g) = Uy g Ux^T + eps (g already mass-normalised, U the bilinear upsampling, eps
    ``MASK_EPS``) and T_b the crop-resize-mirror of sample b (separable: T_b(M) = Ay_b M Ax_b^T,
    and T_b maps a constant map to itself), e.g.
      <T_b n(g_b), n(a_k)> = <(Uy^T Ay_b Uy) g_b (Ux^T Ax_b Ux)^T, a_k> + eps (sum T_b n(g_b) + sum n(a_k)) + eps^2 S^2,
    every term an h x w computation.

    Args:
        cam_aug: [N, h, w] augmented-view heatmaps (all rows negatives may come from).
        cam: [B, h, w] view heatmaps of this process' anchors, whose augmented maps are
            ``cam_aug[local]``; boxes [B, 4], flips [B].
    Returns dict of
        pos [B]: <n(a_i), T_i n(g_i)>, the positive pair's inner product;
        aug_gram [B, N]: <n(a_i), n(a_k)>; cross [B, N]: <T_i n(g_i), n(a_k)>;
        aug_sq [N], target_sq [B]: squared norms.
    """
    h, w = cam.shape[-2:]
    device = cam.device
    boxes = boxes.to(device, torch.float32)
    up_y, up_x = _upsample_matrix(h, size, device), _upsample_matrix(w, size, device)  # [S, h], [S, w]
    a = _mass_normalised(cam_aug.float(), up_y, up_x)  # [N, h, w]
    g = _mass_normalised(cam.float(), up_y, up_x)  # [B, h, w]
    # Crop-resize(-mirror) of the upsampled axis, composed with the upsampling: [B, S, h] / [B, S, w].
    crop_y = _axis_resample(up_y, size, boxes[:, 0], boxes[:, 2], None)
    crop_x = _axis_resample(up_x, size, boxes[:, 1], boxes[:, 3], flips.to(device))
    gram_y, gram_x = up_y.T @ up_y, up_x.T @ up_x  # [h, h], [w, w]
    pixels = float(size * size)

    sum_a = torch.einsum("h,nhw,w->n", up_y.sum(0), a, up_x.sum(0))  # mass of n(a) without eps
    sum_t = torch.einsum("bh,bhw,bw->b", crop_y.sum(1), g, crop_x.sum(1))  # mass of T n(g) without eps
    aug_lin = gram_y @ a @ gram_x  # [N, h, w]: <U a U^T, U . U^T> as a bilinear form
    aug_sq = (aug_lin * a).sum((1, 2)) + 2 * MASK_EPS * sum_a + MASK_EPS**2 * pixels
    cross_y = torch.einsum("sh,bsj->bhj", up_y, crop_y)  # Uy^T Ay_b  [B, h, h]
    cross_x = torch.einsum("sw,bsj->bwj", up_x, crop_x)  # Ux^T Ax_b  [B, w, w]
    target_in_aug = cross_y @ g @ cross_x.transpose(1, 2)  # [B, h, w]: <T_b n(g_b), U . U^T>
    target_sq = ((crop_y.transpose(1, 2) @ crop_y) @ g @ (crop_x.transpose(1, 2) @ crop_x) * g).sum((1, 2))
    target_sq = target_sq + 2 * MASK_EPS * sum_t + MASK_EPS**2 * pixels
    a_local = a[local]
    cross = (
        target_in_aug.flatten(1) @ a.flatten(1).T
        + MASK_EPS * (sum_t.view(-1, 1) + sum_a.view(1, -1))
        + MASK_EPS**2 * pixels
    )
    aug_gram = (
        aug_lin[local].flatten(1) @ a.flatten(1).T
        + MASK_EPS * (sum_a[local].view(-1, 1) + sum_a.view(1, -1))
        + MASK_EPS**2 * pixels
    )
    pos = (target_in_aug * a_local).sum((1, 2)) + MASK_EPS * (sum_t + sum_a[local]) + MASK_EPS**2 * pixels
    return dict(pos=pos, cross=cross, aug_gram=aug_gram, aug_sq=aug_sq, target_sq=target_sq)


def _group_width(n: int, group_size: int | None, replicas: int | None) -> int:
    """The size of every group but the last (which holds the rest)."""
    if replicas is not None:
        return math.ceil(n / max(1, replicas))
    return n if not group_size or group_size >= n else group_size


def _group_ids(n: int, group_size: int | None, device,
               replicas: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """([n] contiguous group index of each row, [n] size of each row's group): groups of
    ``group_size`` (the last may be smaller), or with ``replicas`` the pieces ``torch.chunk``
    cuts (DataParallel's scatter: ceil(n / replicas) each, the last the rest). Computed by
    arithmetic on the device from sizes known on the host: no tensor is copied from the host and
    nothing is counted on the device (``bincount`` and ``repeat_interleave`` with device repeats
    wait for the GPU every step)."""
    size = _group_width(n, group_size, replicas)
    ids = torch.arange(n, device=device) // size
    last = (n - 1) // size  # the last group holds the rest
    sizes = torch.where(ids == last, n - size * last, size)
    return ids, sizes


@float32
def cgc_loss(cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor,
             temperature: float = 0.5, size: int = 224, group_size: int | None = None, negatives: str = "aug",
             all_cam_aug: torch.Tensor | None = None, offset: int = 0, replicas: int | None = None) -> torch.Tensor:
    """Contrastive Grad-CAM Consistency: InfoNCE between normalised heatmaps.

    Default (``negatives='aug'``, the released code): anchor n(a_i) (augmented view's map),
    positive T_i(n(g_i)) (the view's map, transformed), negatives n(a_k) for the other k of the
    anchor's group; logits are cosines / temperature, the positive at index 0.
    ``negatives='cross'`` is an ablation: anchor T_i(n(g_i)) against every n(a_k) of its group.

    Groups: the rows of the (global) augmented batch in contiguous groups of ``group_size``
    (the released run: one DataParallel replica of 64 images, 63 negatives per anchor); None
    or a size >= the batch makes one group; ``replicas`` instead cuts the batch as
    ``torch.chunk(batch, replicas)`` (DataParallel's scatter: a partial batch of 11 over 2
    replicas is 6 + 5). The loss is the mean over groups of the mean over each group's anchors,
    as DataParallel averaged the replicas' losses.

    Args:
        cam_aug: [B, h, w] raw heatmaps of this process' augmented views.
        cam: [B, h, w] raw heatmaps of its views; boxes [B, 4] (top, left, height, width)
            fractions of the view; flips [B] bool.
        all_cam_aug: [N, h, w] augmented heatmaps of all processes, gathered with gradient,
            rows ``offset : offset + B`` being ``cam_aug`` (None: this process alone).
    Returns:
        scalar float32. With ``all_cam_aug`` it is this process' share, scaled so that the mean
        over processes (what DistributedDataParallel's gradient averaging takes) is the loss
        over the global batch.
    """
    if negatives not in ("aug", "cross"):
        raise ValueError(f"negatives must be 'aug' or 'cross', got {negatives!r}")
    rows = cam_aug if all_cam_aug is None else all_cam_aug
    n, b = rows.shape[0], cam.shape[0]
    local = slice(offset, offset + b)
    f = _pair_factors(rows, cam, boxes, flips, size, local)
    norm_a = f["aug_sq"].clamp_min(1e-30).sqrt()  # [N]
    norm_t = f["target_sq"].clamp_min(1e-30).sqrt()  # [B]
    groups, group_size_of = _group_ids(n, group_size, cam.device, replicas)
    same_group = groups[local].view(-1, 1) == groups.view(1, -1)  # [B, N]
    index = torch.arange(b, device=cam.device) + offset
    if negatives == "aug":
        positive = f["pos"] / (norm_a[local] * norm_t)
        negative = f["aug_gram"] / (norm_a[local].view(-1, 1) * norm_a.view(1, -1))
        negative = negative.masked_fill(
            ~same_group | (index.view(-1, 1) == torch.arange(n, device=cam.device)), float("-inf")
        )
        logits = torch.cat([positive.view(-1, 1), negative], 1) / temperature
        per_anchor = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=cam.device), reduction="none")
    else:
        logits = (f["cross"] / (norm_t.view(-1, 1) * norm_a.view(1, -1))).masked_fill(
            ~same_group, float("-inf")
        ) / temperature
        per_anchor = F.cross_entropy(logits, index, reduction="none")
    group_count = math.ceil(n / _group_width(n, group_size, replicas))
    weights = (n / b) / (group_count * group_size_of[local].float())
    return (per_anchor * weights).sum()


@float32
def gcc_l2_per_sample(
    cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int = 224
) -> torch.Tensor:
    """[B] per-sample terms of :func:`gcc_l2_loss`: (2 - 2 cos_i) / S^2."""
    f = _pair_factors(cam_aug, cam, boxes, flips, size, slice(0, cam.shape[0]))
    cosine = f["pos"] / (f["aug_sq"].clamp_min(1e-30).sqrt() * f["target_sq"].clamp_min(1e-30).sqrt())
    return (2 - 2 * cosine) / (size * size)


def gcc_l2_loss(
    cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int = 224
) -> torch.Tensor:
    """The earlier L2 "GCC" baseline as released (``disable_contrast``): no negatives,
    ``mse_loss`` between the L2-normalised flattened masks n(a_i) and T_i(n(g_i)), i.e.
    mean over the batch of (2 - 2 cos_i) / S^2. Args as :func:`cgc_loss`."""
    return gcc_l2_per_sample(cam_aug, cam, boxes, flips, size).mean()
