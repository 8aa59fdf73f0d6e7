"""Heatmap metrics: each scores the run's heatmaps of the validation images with boxes, in the
Content Heatmap pass (the same heatmaps, no extra forward). The pointing game below is the
example to copy: a new metric is one function in a file of its own::

    from semisup.eval.heatmap_metrics import register_heatmap_metric
    @register_heatmap_metric("my_metric", column="Mine")
    def my_metric(cams, boxes, size): ...       # -> [B]

loaded with ``--plugins MODULE`` where it lies outside the package. The decorator declares the
metric in ``semisup.registry.METRICS`` (a :class:`semisup.registry.MetricSpec`), which every
consumer reads:

- its name is the key in ``final.json``, ``metrics.csv`` and ``eval.jsonl``;
- the evaluator computes ``score(cams [B, h, w], boxes: B arrays [n_i, 4] (original pixels),
  size (H, W)) -> [B]`` in [0, 1] where CH is computed (every ``--ch-every`` epochs, the final
  and the best checkpoint, ``semisup/evaluate.py --metrics ch``), reported as the percentage
  mean over images;
- the planner counts no pass for it beyond CH's (one upsampling per image beside CH's);
- ``column`` is its report column (limited-label and full-supervision tables, left out where
  no run has it), ``tag`` its TensorBoard tag (default ``val/<name>``);
- ``headline=True`` also makes it a ``final_<name>`` column of ``jobs/status.py`` and a metric
  of TensorBoard's hparams table.

Content Heatmap itself, with its published-protocol details, is
:func:`semisup.data.boxes.content_heatmap`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from semisup.data.boxes import box_mask
from semisup.eval.metrics import register_metric
from semisup.registry import HEATMAP_METRICS, MetricSpec

Score = Callable[[torch.Tensor, list[np.ndarray], tuple[int, int]], torch.Tensor]


def register_heatmap_metric(name: str, column: str | None = None, tag: str | None = None, headline: bool = False,
                            higher_is_better: bool = True) -> Callable[[Score], Score]:
    """``@register_heatmap_metric("name", column="Column")`` on ``score(cams, boxes, size) -> [B]``."""
    def add(score: Score) -> Score:
        summary = ((score.__doc__ or name).strip().splitlines() or [name])[0]
        register_metric(MetricSpec(name, "ch", "ch", column=column or name, optional=True, tag=tag or "",
                                   headline=headline, higher_is_better=higher_is_better, summary=summary, score=score))
        return score
    return add


def upsampled(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, h, w] -> [B, H, W] bilinear, as Content Heatmap resizes (half-pixel centres)."""
    return F.interpolate(cams.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


@register_heatmap_metric("pointing_game", column="Pointing")
def pointing_game(cams: torch.Tensor, boxes: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """Pointing game (Zhang et al. 2016): a hit where the heatmap's maximum, at the annotated
    image's size, lies inside a box of the class (the first maximum in row-major order; an
    all-zero map points at the top-left pixel)."""
    up = upsampled(cams, size)
    peak = up.flatten(1).argmax(1)
    masks = torch.stack([box_mask(b, *size) for b in boxes]).to(up.device)
    return masks.flatten(1).gather(1, peak[:, None]).squeeze(1).double()


def scores(cams: torch.Tensor, boxes: list[np.ndarray], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """{name: [B] float64} of every registered heatmap metric."""
    return {name: metric.score(cams, boxes, size).double() for name, metric in HEATMAP_METRICS.items()}
