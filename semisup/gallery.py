"""PNG galleries of Grad-CAM overlays with ground-truth boxes, for one or more models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semisup import transforms as T
from semisup.data import EvalDataset


@torch.no_grad()
def gallery_heatmaps(model, dataset: EvalDataset, positions: list[int], device: torch.device):
    """Per image: (uint8 image [H', W', 3], heatmap [H', W'] in [0, 1], predicted class, label)."""
    model.eval()
    out = []
    for pos in positions:
        item = dataset[pos]
        image = item["image"].unsqueeze(0).to(device)
        label = torch.tensor([item["label"]], device=device)
        logits, features = model(T.normalize(image))
        cam = model.cam(logits, features, label)
        cam = F.interpolate(cam.unsqueeze(1), size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        cam = (cam / cam.max().clamp_min(1e-12)).cpu().numpy()
        out.append((item["image"].permute(1, 2, 0).numpy(), cam, int(logits.argmax(1)), item["label"]))
    return out


def save_gallery(models: list, names: list[str], bundle, cfg, device: torch.device, path: Path, count: int | None = None, seed: int = 0) -> Path:
    """A grid: one row per validation image, one column per model, each a Grad-CAM overlay of
    the ground-truth class with the ground-truth boxes drawn; titles give prediction and label."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from semisup.evaluate import scale_boxes

    val = bundle.val
    count = min(count or cfg.gallery, len(val.source))
    positions = sorted(np.random.default_rng(seed).choice(len(val.source), size=count, replace=False).tolist())
    dataset = EvalDataset(val.source, cfg.ch_short_side)
    columns = [gallery_heatmaps(m, dataset, positions, device) for m in models]
    per_row = 4  # images per figure row; each image takes len(models) panels
    rows = int(np.ceil(count / per_row))
    fig, axes = plt.subplots(rows, per_row * len(models), figsize=(2.0 * per_row * len(models), 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, pos in enumerate(positions):
        for m, (name, column) in enumerate(zip(names, columns)):
            image, cam, pred, label = column[n]
            ax = axes[n // per_row, (n % per_row) * len(models) + m]
            ax.imshow(image)
            ax.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if val.boxes is not None and val.boxes[pos] is not None:
                for x0, y0, x1, y1 in scale_boxes(val.boxes[pos], val.sizes[pos], image.shape[:2]):
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5))
            classes = bundle.classes
            verdict = classes[pred] if pred == label else f"{classes[pred]} (is {classes[label]})"
            ax.set_title(f"{name}: {verdict}", fontsize=7, color="black" if pred == label else "red")
    fig.suptitle("Grad-CAM of the true class, boxes in white", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
