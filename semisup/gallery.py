"""Galleries of Grad-CAM overlays with ground-truth boxes, for one or more models: a PNG, or a
figure for TensorBoard.

Each panel: the validation image, the Grad-CAM of its true class (max-normalised, one shared
colour bar), the boxes in white, and a title with the true and predicted class and the panel's
Content Heatmap (published protocol). An all-zero heatmap (no positive evidence for the class:
the published CH counts it as uniform) is drawn without overlay and labelled as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semisup import transforms as T
from semisup.boxes import content_heatmap, scale_boxes
from semisup.data import EvalDataset


@dataclass
class Panel:
    image: np.ndarray  # uint8 [H, W, 3]
    heatmap: np.ndarray  # [H, W] in [0, 1]; all zero when the Grad-CAM is
    predicted: int
    label: int
    ch: float  # percent, NaN without boxes
    zero: bool


@torch.no_grad()
def gallery_panels(model, dataset: EvalDataset, boxes: list, sizes: list, positions: list[int], device: torch.device) -> list[Panel]:
    """One :class:`Panel` per validation position (``boxes``/``sizes``: the split's, original pixels)."""
    was_training = model.training
    model.eval()
    panels = []
    for pos in positions:
        item = dataset[pos]
        image = item["image"].unsqueeze(0).to(device)
        label = torch.tensor([item["label"]], device=device)
        logits, features = model(T.normalize(image))
        cam = model.cam(logits, features, label).float()
        ch = float("nan")
        if boxes is not None and boxes[pos] is not None:
            ch = 100 * content_heatmap(cam, [boxes[pos]], sizes[pos])[0].item()
        up = F.interpolate(cam.unsqueeze(1), size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        peak = up.max().item()
        panels.append(Panel(item["image"].permute(1, 2, 0).numpy(), (up / peak).cpu().numpy() if peak > 0 else np.zeros(up.shape),
                            int(logits.argmax(1)), int(item["label"]), ch, peak <= 0))
    model.train(was_training)
    return panels


def _short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def gallery_figure(models: list, names: list[str], bundle, cfg, device: torch.device, count: int | None = None, seed: int = 0):
    """A matplotlib figure: ``count`` validation images (the same ones for every call with this
    seed), one panel per model side by side for each image."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    val = bundle.val
    count = min(count or cfg.gallery, len(val.source))
    positions = sorted(np.random.default_rng(seed).choice(len(val.source), size=count, replace=False).tolist())
    dataset = EvalDataset(val.source, cfg.ch_short_side)
    columns = [gallery_panels(m, dataset, val.boxes, val.sizes, positions, device) for m in models]
    images_per_row = max(1, 4 // len(models))
    per_row = images_per_row * len(models)  # panels per figure row
    rows = int(np.ceil(count / images_per_row))
    # Room for three title lines above each panel: titles never run into the panel above.
    fig, axes = plt.subplots(rows, per_row, figsize=(2.1 * per_row + 0.9, 2.75 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    classes = bundle.classes
    for n, pos in enumerate(positions):
        for m, (name, column) in enumerate(zip(names, columns)):
            panel = column[n]
            ax = axes[n // images_per_row, (n % images_per_row) * len(models) + m]
            ax.imshow(panel.image)
            if panel.zero:
                ax.text(0.5, 0.5, "all-zero\nheatmap", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                        color="black", bbox=dict(facecolor="orange", alpha=0.85, edgecolor="none"))
            else:
                ax.imshow(panel.heatmap, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if val.boxes is not None and val.boxes[pos] is not None:
                for x0, y0, x1, y1 in scale_boxes(val.boxes[pos], val.sizes[pos], panel.image.shape[:2]):
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5))
            right = panel.predicted == panel.label
            ch = "CH –" if panel.ch != panel.ch else f"CH {panel.ch:.0f} %"
            lines = ([_short(name, 22)] if len(models) > 1 else []) + [
                f"true {_short(classes[panel.label])}", f"pred {_short(classes[panel.predicted])} · {ch}"]
            ax.set_title("\n".join(lines), fontsize=7, color="black" if right else "red", loc="center")
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), ax=axes, shrink=0.6, label="Grad-CAM of the true class (max = 1)")
    fig.suptitle("Grad-CAM of the true class; ground-truth boxes in white; red title: wrong prediction", fontsize=9)
    return fig


def save_gallery(models: list, names: list[str], bundle, cfg, device: torch.device, path: Path, count: int | None = None, seed: int = 0) -> Path:
    """:func:`gallery_figure` written to ``path`` as PNG."""
    import matplotlib.pyplot as plt
    fig = gallery_figure(models, names, bundle, cfg, device, count, seed)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
