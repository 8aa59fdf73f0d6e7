"""The settings the evaluation reads (the evaluator's passes, the gallery): nothing of training's
optimiser, schedule or data location reaches it."""
from __future__ import annotations

from dataclasses import dataclass

from semisup.config import SettingsView


@dataclass(frozen=True)
class EvalSettings(SettingsView):
    """The settings of the same names (``semisup.config``; ``--help`` says each)."""
    image_size: int  # top-1's centre crop, the CGC loss's crop, insertion's side
    resize_size: int  # top-1's shorter side before the crop
    ch_short_side: int  # Content Heatmap's shorter side, uncropped
    crop_scale_min: float  # the validation CGC loss's random resized crops
    max_eval_images: int | None
    workers: int
    val_cache: str | None  # decoded top-1 crops kept here between evaluations
    explainer: str  # the heatmap method of CH, the CGC loss, insertion and the gallery
    temperature: float  # the validation CGC loss's InfoNCE
    group_size: int
    cgc_negatives: str
    cam_size: int
    knn_k: int
    knn_temperature: float
    gallery: int  # panels of the gallery (0: none)
    amp: str  # forwards in bf16/fp16 on GPUs, as in training
    channels_last: bool


def eval_settings(source) -> EvalSettings:
    """``source`` itself where it is already the evaluation's settings, else read from it (a Config)."""
    return source if isinstance(source, EvalSettings) else EvalSettings.of(source)
