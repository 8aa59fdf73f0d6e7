"""Galleries of Grad-CAM overlays with ground-truth boxes, for one or more models: a matplotlib
PNG (the end of a run, the report), or a grid drawn with PIL for TensorBoard (every evaluation:
milliseconds, where the figure takes about a second on a CPU).

Each panel: the validation image, the Grad-CAM of its true class (max-normalised, one shared
colour bar), the boxes in white, and a title with the true and predicted class and the panel's
Content Heatmap (published protocol). An all-zero heatmap (no positive evidence for the class:
the published CH counts it as uniform) is drawn without overlay and labelled as such.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semisup.data import transforms as T
from semisup.data.boxes import content_heatmap, scale_boxes
from semisup.data.datasets import EvalDataset
from semisup.eval.settings import eval_settings
from semisup.files import write_atomic
from semisup.method import explainers


@dataclass
class Panel:
    image: np.ndarray  # uint8 [H, W, 3]
    heatmap: np.ndarray  # [H, W] in [0, 1]; all zero when the Grad-CAM is
    predicted: int
    label: int
    ch: float  # percent, NaN without boxes
    zero: bool


@torch.no_grad()
def gallery_panels(model, dataset: EvalDataset, boxes: list, sizes: list, positions: list[int], device: torch.device,
                   explainer: str = "gradcam") -> list[Panel]:
    """One :class:`Panel` per validation position (``boxes``/``sizes``: the split's, original pixels)."""
    was_training = model.training
    model.eval()
    panels = []
    for pos in positions:
        item = dataset[pos]
        image = item["image"].unsqueeze(0).to(device)
        label = torch.tensor([item["label"]], device=device)
        normalised = T.normalize(image)
        logits, features = model(normalised)
        cam = explainers.explain(explainer, model, normalised, logits, features, label).float()
        ch = float("nan")
        if boxes is not None and boxes[pos] is not None:
            ch = 100 * content_heatmap(cam, [boxes[pos]], sizes[pos])[0].item()
        up = F.interpolate(cam.unsqueeze(1), size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
        peak = up.max().item()
        panels.append(
            Panel(
                item["image"].permute(1, 2, 0).numpy(), (up / peak).cpu().numpy() if peak > 0 else np.zeros(up.shape),
                int(logits.argmax(1)), int(item["label"]), ch, peak <= 0,
            )
        )
    model.train(was_training)
    return panels


HEATMAP_CMAP = "inferno"  # perceptually uniform: equal steps of the map look like equal steps of heat


def _short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _wrapped(name: str, width: int = 24) -> list[str]:
    """A model's label over as many lines as it needs: never cut (it names what is compared)."""
    import textwrap
    return textwrap.wrap(name, width) or [name]


def boxes_at(val, pos: int) -> tuple[list | None, tuple[int, int] | None]:
    """(boxes, original size) of validation image ``pos``; (None, None) for a dataset without
    boxes (its split records no sizes) or an image without an annotation."""
    if val.boxes is None or val.boxes[pos] is None:
        return None, None
    return val.boxes[pos], val.sizes[pos]


def gallery_positions(images: int, count: int, seed: int = 0) -> list[int]:
    """The validation positions a gallery shows: the same ``count`` for every call with this seed."""
    count = min(count, images)
    return sorted(np.random.default_rng(seed).choice(images, size=count, replace=False).tolist())


def gallery_figure(models: list, names: list[str], bundle, settings, device: torch.device, count: int | None = None,
                   seed: int = 0, class_names: dict[str, str] | None = None):
    """A matplotlib figure: ``count`` validation images (the same ones for every call with this
    seed), one panel per model side by side for each image. ``class_names`` maps class folder
    names (wnids) to readable names for the titles; ``settings``: the evaluation's (or a Config)."""
    s = eval_settings(settings)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    val = bundle.val
    positions = gallery_positions(len(val.source), count or s.gallery, seed)
    count = len(positions)
    dataset = EvalDataset(val.source, s.ch_short_side)
    columns = [gallery_panels(m, dataset, val.boxes, val.sizes, positions, device, s.explainer) for m in models]
    images_per_row = max(1, 4 // len(models))
    per_row = images_per_row * len(models)  # panels per figure row
    rows = int(np.ceil(count / images_per_row))
    name_lines = max(len(_wrapped(n)) for n in names) if len(models) > 1 else 0
    # Room for every title line above each panel: titles never run into the panel above.
    figsize = (2.1 * per_row + 0.9, (2.45 + 0.15 * name_lines) * rows)
    fig, axes = plt.subplots(rows, per_row, figsize=figsize, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    classes = [(class_names or {}).get(c, c) for c in bundle.classes]
    for n, pos in enumerate(positions):
        boxes, size = boxes_at(val, pos)
        for m, (name, column) in enumerate(zip(names, columns)):
            ax = axes[n // images_per_row, (n % images_per_row) * len(models) + m]
            _draw_panel(ax, column[n], boxes, size, classes, name if len(models) > 1 else None)
    method = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}.get(s.explainer, s.explainer)
    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap=HEATMAP_CMAP), ax=axes, shrink=0.6,
                 label=f"{method} of the true class (max = 1)")
    fig.suptitle(f"{method} of the true class; ground-truth boxes in white; red title: wrong prediction", fontsize=9)
    return fig


def _draw_panel(ax, panel: Panel, boxes, size: tuple[int, int], classes: list[str], model_name: str | None) -> None:
    """One image with its heatmap, its boxes (original pixels ``size``) and a title: the model's
    name (several models), the true and predicted class and CH, red where the prediction is wrong."""
    from matplotlib.patches import Rectangle

    ax.imshow(panel.image)
    if panel.zero:
        ax.text(0.5, 0.5, "all-zero\nheatmap", transform=ax.transAxes, ha="center", va="center", fontsize=8,
                color="black", bbox=dict(facecolor="orange", alpha=0.85, edgecolor="none"))
    else:
        ax.imshow(panel.heatmap, cmap=HEATMAP_CMAP, alpha=0.5, vmin=0, vmax=1)
    if boxes is not None:
        for x0, y0, x1, y1 in scale_boxes(boxes, size, panel.image.shape[:2]):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=1.5))
    ch = "CH –" if panel.ch != panel.ch else f"CH {panel.ch:.0f} %"
    lines = (_wrapped(model_name) if model_name else []) + [
        f"true {_short(classes[panel.label])}", f"pred {_short(classes[panel.predicted])} · {ch}"]
    ax.set_title("\n".join(lines), fontsize=7, color="black" if panel.predicted == panel.label else "red", loc="center")


def save_gallery(
    models: list, names: list[str], bundle, settings, device: torch.device, path: Path, count: int | None = None,
    seed: int = 0, class_names: dict[str, str] | None = None,
) -> Path:
    """:func:`gallery_figure` written to ``path`` as PNG."""
    import matplotlib.pyplot as plt
    fig = gallery_figure(models, names, bundle, settings, device, count, seed, class_names)
    path = Path(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


# ---- the TensorBoard grid ----------------------------------------------------------------
PANEL_SIDE = 160  # pixels of each panel's longer side in the TensorBoard grid
CAPTION_LINES, LINE_HEIGHT, COLUMNS = 2, 13, 4


@functools.cache
def _heatmap_colours() -> np.ndarray:
    """HEATMAP_CMAP as a uint8 [256, 3] table (matplotlib's colour registry, without pyplot)."""
    import matplotlib
    return (matplotlib.colormaps[HEATMAP_CMAP](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)


def panel_image(panel: Panel, boxes, size: tuple[int, int], classes: list[str]):
    """One panel as the figure draws it, in PIL: the image under half the heatmap's colour (none
    when all zero), the boxes in white, a two-line caption, red where the prediction is wrong."""
    from PIL import Image, ImageDraw, ImageFont

    rgb = panel.image.astype(np.float32)
    if not panel.zero:
        rgb = 0.5 * rgb + 0.5 * _heatmap_colours()[np.round(panel.heatmap * 255).astype(np.int64)]
    h, w = panel.image.shape[:2]
    factor = PANEL_SIDE / max(h, w)
    picture = Image.fromarray(rgb.round().astype(np.uint8)).resize(
        (max(1, round(w * factor)), max(1, round(h * factor))), Image.BILINEAR)
    caption = CAPTION_LINES * LINE_HEIGHT + 4
    cell = Image.new("RGB", (PANEL_SIDE, PANEL_SIDE + caption), "white")
    cell.paste(picture, (0, caption))
    draw, font = ImageDraw.Draw(cell), ImageFont.load_default(size=11)
    if boxes is not None:
        for x0, y0, x1, y1 in scale_boxes(boxes, size, panel.image.shape[:2]) * factor:
            # A box under a pixel wide (or a degenerate one) is drawn as a line, never refused.
            draw.rectangle([x0, caption + y0, max(x0, x1 - 1), caption + max(y0, y1 - 1)], outline="white", width=2)
    if panel.zero:
        draw.text((PANEL_SIDE // 2, caption + picture.height // 2), "all-zero heatmap", fill="black", font=font,
                  anchor="mm", stroke_width=2, stroke_fill="orange")
    ch = "CH –" if panel.ch != panel.ch else f"CH {panel.ch:.0f} %"
    colour = "black" if panel.predicted == panel.label else "red"
    for line, text in enumerate([f"true {_short(classes[panel.label])}",
                                 f"pred {_short(classes[panel.predicted])} · {ch}"]):
        draw.text((2, 2 + line * LINE_HEIGHT), text, fill=colour, font=font)
    return cell


def gallery_grid(model, bundle, settings, device: torch.device, seed: int = 0) -> np.ndarray:
    """The gallery of one model for TensorBoard: ``settings.gallery`` panels (the figure's images),
    ``COLUMNS`` a row, as uint8 [H, W, 3]; ``settings``: the evaluation's (or a Config)."""
    from PIL import Image

    s, val = eval_settings(settings), bundle.val
    positions = gallery_positions(len(val.source), s.gallery, seed)
    dataset = EvalDataset(val.source, s.ch_short_side)
    panels = gallery_panels(model, dataset, val.boxes, val.sizes, positions, device, s.explainer)
    cells = [panel_image(p, *boxes_at(val, pos), bundle.classes) for p, pos in zip(panels, positions)]
    columns = min(COLUMNS, len(cells))
    width, height = cells[0].size
    grid = Image.new("RGB", (columns * (width + 4), -(-len(cells) // columns) * (height + 4)), "white")
    for n, cell in enumerate(cells):
        grid.paste(cell, ((n % columns) * (width + 4), (n // columns) * (height + 4)))
    return np.asarray(grid)
