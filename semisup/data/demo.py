"""The embedded contextual-bias demo dataset, built from data that ships inside scikit-learn.

Each image is a patch of one of scikit-learn's two bundled photographs with one of its 1,797
real handwritten digits (8 x 8, 10 classes) pasted at a random position and scale; the box
around the digit's ink is the ground-truth object box for Content Heatmap. A small coloured
square elsewhere in the image is the context cue: in the training split its colour is the
class's own colour with probability ``cue_probability``, in the validation split it is random.
A model that relies on the cue instead of the digit loses accuracy on validation and puts its
Grad-CAM mass outside the box. Train and validation use disjoint digit instances.
"""
from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from semisup.config import DEMO_VERSION

log = logging.getLogger(__name__)

VERSION = DEMO_VERSION  # bumped in semisup.config, which records it in every demo run
# Ten well-separated colours, one per class, for the context cue.
CUE_COLOURS = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [250, 190, 212], [0, 128, 128]], dtype=np.float32)
CUE_OPACITY = 0.35  # a faint tint: a real shortcut, but not so easy that the digit is never learned
PHOTO_CONTRAST = 0.5  # the photo patch is scaled by this around mid-grey, so the digit stays legible
DIGIT_SCALE = (0.5, 0.8)  # the digit's side as a fraction of the image side
BACKGROUND_BLUR = 1.5  # Gaussian radius (pixels of the 64 px image) applied to the photo patch
COLOUR_CAST = 0.35  # per-image lighting: channel gains drawn from 1 +- this, and a brightness shift
CLASS_NAMES = [f"digit_{i}" for i in range(10)]


@dataclass
class DemoSplit:
    """images uint8 [N, S, S, 3]; labels int64 [N]; boxes int64 [N, 4] (xmin, ymin, xmax, ymax),
    pixel coordinates, max exclusive; cue_matches bool [N], whether the cue shows the class."""
    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    cue_matches: np.ndarray


@dataclass
class DemoData:
    train: DemoSplit
    val: DemoSplit
    classes: list[str]


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "semisup"


def load_demo(cache_dir: str | Path | None = None, size: int = 64, seed: int = 0, cue_probability: float = 0.8,
              train_renders: int = 10, val_renders: int = 2) -> DemoData:
    """Build (or read from the cache) the demo dataset. Deterministic in all arguments."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    name = (f"demo-v{VERSION}-o{CUE_OPACITY}-p{PHOTO_CONTRAST}-d{DIGIT_SCALE[0]}-{DIGIT_SCALE[1]}-b{BACKGROUND_BLUR}"
            f"-c{COLOUR_CAST}-s{size}-seed{seed}-cue{cue_probability}-r{train_renders}x{val_renders}.npz")
    path = cache_dir / name
    if path.is_file():
        try:
            with np.load(path) as z:
                return _from_arrays(dict(z))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            log.warning("demo cache %s unreadable; rebuilding it", path)
    arrays = _build(size, seed, cue_probability, train_renders, val_renders)
    _save_cache(cache_dir, path, arrays)
    return _from_arrays(arrays)


def _save_cache(cache_dir: Path, path: Path, arrays: dict) -> None:
    """Write the cache atomically (concurrent first uses never read a half-written file); where it
    cannot be written (a full disk, no permission) the run goes on with the dataset built in memory,
    and nothing half-written, nor a folder this made, is left."""
    made = next((p for p in [*reversed(cache_dir.parents), cache_dir] if not p.exists()), None)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        log.warning("the demo dataset could not be cached in %s (%s): built in memory for this run", cache_dir,
                    err.strerror or err)


def _from_arrays(a: dict) -> DemoData:
    split = lambda p: DemoSplit(a[f"{p}_images"], a[f"{p}_labels"], a[f"{p}_boxes"], a[f"{p}_cue"])
    return DemoData(split("train"), split("val"), list(CLASS_NAMES))


def _build(size: int, seed: int, cue_probability: float, train_renders: int, val_renders: int) -> dict:
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    photos = [np.asarray(p) for p in load_sample_images().images]
    digits = load_digits()
    order = rng.permutation(len(digits.target))
    n_val = len(order) // 5
    parts = {"val": (order[:n_val], val_renders, None), "train": (order[n_val:], train_renders, cue_probability)}
    arrays = {}
    for name, (indices, renders, cue_p) in parts.items():
        items = np.repeat(indices, renders)
        rendered = [_render(digits.images[i], int(digits.target[i]), photos, size, cue_p, rng) for i in items]
        arrays[f"{name}_images"] = np.stack([r[0] for r in rendered])
        arrays[f"{name}_labels"] = digits.target[items].astype(np.int64)
        arrays[f"{name}_boxes"] = np.stack([r[1] for r in rendered]).astype(np.int64)
        arrays[f"{name}_cue"] = np.array([r[2] for r in rendered])
    return arrays


def _render(digit: np.ndarray, label: int, photos: list[np.ndarray], size: int, cue_probability: float | None,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    photo = photos[rng.integers(len(photos))]
    side = int(rng.integers(size, min(photo.shape[:2]) // 2))
    top, left = rng.integers(photo.shape[0] - side), rng.integers(photo.shape[1] - side)
    patch = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
    if BACKGROUND_BLUR:
        patch = patch.filter(ImageFilter.GaussianBlur(BACKGROUND_BLUR))
    # Halve the photo's contrast so the digit stays legible on busy patches (flower petals).
    image = PHOTO_CONTRAST * np.asarray(patch, dtype=np.float32) + 128.0 * (1 - PHOTO_CONTRAST)

    digit_side = int(rng.integers(int(DIGIT_SCALE[0] * size), int(DIGIT_SCALE[1] * size) + 1))
    alpha = (
        np.asarray(
            Image.fromarray((digit / 16.0 * 255).astype(np.uint8)).resize((digit_side, digit_side), Image.BILINEAR),
            dtype=np.float32,
        )
        / 255.0
    )
    y0, x0 = rng.integers(size - digit_side + 1), rng.integers(size - digit_side + 1)
    region = image[y0:y0 + digit_side, x0:x0 + digit_side]
    # Black or white ink, whichever contrasts more with the local background.
    ink = 0.0 if region.mean() > 127 else 255.0
    region[:] = region * (1 - alpha[..., None]) + ink * alpha[..., None]
    ys, xs = np.nonzero(alpha > 0.2)
    box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])

    matches = cue_probability is not None and rng.random() < cue_probability
    colour = CUE_COLOURS[label] if matches else CUE_COLOURS[rng.integers(len(CUE_COLOURS))]
    cue_side = max(4, size // 8)
    for _ in range(20):  # place the cue where it does not touch the digit's box
        cy, cx = rng.integers(size - cue_side + 1), rng.integers(size - cue_side + 1)
        if cx + cue_side <= box[0] or cx >= box[2] or cy + cue_side <= box[1] or cy >= box[3]:
            break
    cue = image[cy:cy + cue_side, cx:cx + cue_side]
    cue[:] = (1 - CUE_OPACITY) * cue + CUE_OPACITY * colour
    if COLOUR_CAST:  # lighting varies between photos; the label does not
        gains = 1 + COLOUR_CAST * (2 * rng.random(3) - 1)
        image = image * gains + 64 * COLOUR_CAST * (2 * rng.random() - 1)
    return image.clip(0, 255).astype(np.uint8), box, bool(matches)
