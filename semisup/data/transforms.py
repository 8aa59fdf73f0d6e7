"""Image transforms on uint8 tensors [3, H, W]; every random draw comes from a given generator.

Workers return uint8 images (4x less to copy than float); normalisation happens on the
device (:func:`normalize`). The CGC pair transform returns the crop box as fractions of the
view, the form :func:`semisup.method.cgc.transform_cam` takes.
"""
from __future__ import annotations

import functools
import math

import torch
import torchvision.transforms.v2.functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_RATIO = (3 / 4, 4 / 3)


def sample_crop(height: int, width: int, scale: tuple[float, float], generator: torch.Generator,
                ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) in pixels, drawn as torchvision's RandomResizedCrop draws them."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator).tolist()
        target_area = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u[2] * (height - h + 1)), height - h)
            left = min(int(u[3] * (width - w + 1)), width - w)
            return top, left, h, w
    # Fallback, as torchvision: the whole image, aspect clamped to the ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_crop_flip(
    height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int, bool]:
    """(top, left, h, w, flip): RandomResizedCrop's box and RandomHorizontalFlip's coin, drawn in
    that order (the CPU and the GPU decode paths draw the same numbers from the same seed)."""
    top, left, h, w = sample_crop(height, width, scale, generator)
    return top, left, h, w, torch.rand(1, generator=generator).item() < 0.5


def apply_crop_flip(image: torch.Tensor, params: tuple[int, int, int, int, bool], size: int) -> torch.Tensor:
    """Crop [..., 3, H, W] to the box, resize to size x size (bilinear, antialiased), mirror."""
    top, left, h, w, flip = params
    out = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    return TF.horizontal_flip(out) if flip else out


def random_crop_flip(
    image: torch.Tensor, size: int, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """RandomResizedCrop(size, scale) + RandomHorizontalFlip on [3, H, W] uint8."""
    return apply_crop_flip(image, draw_crop_flip(image.shape[-2], image.shape[-1], scale, generator), size)


def center_view(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Resize(resize) (shorter side) + CenterCrop(crop) on [3, H, W] uint8."""
    if min(image.shape[-2:]) != resize:
        image = TF.resize(image, [resize], antialias=True)
    return TF.center_crop(image, [crop, crop])


FLIP_PROTOCOLS = ("released", "consistent")


def draw_pair(size: int, scale: tuple[float, float], generator: torch.Generator, protocol: str = "consistent"
              ) -> tuple[tuple[int, int, int, int, bool], bool]:
    """The CGC pair's random parameters on a square view of ``size``: ((top, left, h, w,
    mirrored), flag), where ``mirrored`` says whether the augmented view is mirrored and ``flag``
    whether the loss mirrors the view's heatmap.

    'consistent' (what the method means): one coin, flag == mirrored.
    'released' (``datasets/imagefolder_cgc_ssl.py``): ``if random.random() > 0.5: aug =
    RandomHorizontalFlip()(aug); hor_flip = True``; RandomHorizontalFlip flips with probability
    0.5 itself, so the flag is set for half the pairs and only half of those are mirrored: a
    quarter of all pairs train against a mirrored target. The two coins are drawn in that order
    from ``generator`` (the released code drew them from Python's and torch's global generators)."""
    top, left, h, w = sample_crop(size, size, scale, generator)
    if protocol == "consistent":
        mirrored = torch.rand(1, generator=generator).item() < 0.5
        return (top, left, h, w, mirrored), mirrored
    if protocol != "released":
        raise ValueError(f"flip protocol must be one of {FLIP_PROTOCOLS}, got {protocol!r}")
    flag = torch.rand(1, generator=generator).item() > 0.5
    mirrored = flag and torch.rand(1, generator=generator).item() < 0.5
    return (top, left, h, w, mirrored), flag


def pair_box(
    params: tuple[int, int, int, int, bool], size: int, flag: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CGC transform's (box [4] float (top, left, height, width) as fractions of the square
    view, flip bool [], the loss' mirror flag: ``flag``, else the parameters' own) from its drawn
    pixel parameters."""
    top, left, h, w, mirrored = params
    return (torch.tensor([top / size, left / size, h / size, w / size], dtype=torch.float32),
            torch.tensor(mirrored if flag is None else flag))


def cgc_pair(view: torch.Tensor, scale: tuple[float, float], generator: torch.Generator, protocol: str = "consistent"
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CGC transform T of a square view [3, S, S]: RandomResizedCrop back to S + random flip,
    the flip drawn as ``protocol`` says (:func:`draw_pair`).

    Returns (augmented view [3, S, S] uint8, box float [4] (top, left, height, width) as
    fractions of the view, flip bool []: whether the loss mirrors the view's heatmap)."""
    size = view.shape[-1]
    params, flag = draw_pair(size, scale, generator, protocol)
    return (apply_crop_flip(view, params, size), *pair_box(params, size, flag))


def normalize(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [B, 3, H, W] on the device -> normalised float32 [B, 3, H, W] (autocast lowers it where
    it pays), in the released arithmetic: torchvision's ``ToTensor`` (``x / 255``) then
    ``Normalize`` (``(x - mean) / std``), bit for bit. ``(x - 255 mean) / (255 std)`` differs in
    the last bit for half the inputs, which train-mode BatchNorm amplifies enough to reorder
    near-tied pixels of the insertion metric (FIDELITY.md)."""
    out = normalize_unit(images.float() / 255)
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def normalize_unit(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [0, 1] -> ``(x - mean) / std`` per channel, as ``Normalize`` computes it."""
    mean, std = _mean_std(images.dtype, images.device)
    return (images - mean) / std


@functools.lru_cache(maxsize=None)
def _mean_std(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, 3, 1, 1] mean and std on ``device``, made once: a tensor built from host values is a
    copy the GPU stream waits for, three times a step before."""
    with torch.inference_mode(False):  # first asked in an evaluation: still ordinary tensors for training
        return (torch.tensor(IMAGENET_MEAN, dtype=dtype, device=device).view(1, 3, 1, 1),
                torch.tensor(IMAGENET_STD, dtype=dtype, device=device).view(1, 3, 1, 1))
