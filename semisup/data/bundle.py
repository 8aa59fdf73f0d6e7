"""What every dataset format gives training and evaluation: a :class:`DataBundle` of labeled,
unlabeled and validation data (the shared types, below every reader and builder)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class EvalSet:
    """Validation data. ``boxes[i]`` is a float array [n, 4] (xmin, ymin, xmax, ymax) in pixels of
    the original image (max exclusive), the boxes of the image's ground-truth class, or None
    where the image has no annotation (left out of Content Heatmap). ``sizes[i]`` is the
    original (H, W), the frame of the boxes."""
    source: object
    boxes: list[np.ndarray] | None
    sizes: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class DataBundle:
    """Everything training and evaluation need from the data side."""
    classes: list[str]
    labeled: object            # source of labeled training images
    labeled_indices: np.ndarray
    unlabeled: object | None   # source of unlabeled training images (None: full supervision / CE only)
    unlabeled_indices: np.ndarray | None
    val: EvalSet
    summary: dict
