"""Ground-truth boxes for Content Heatmap: ImageNet validation XML (PASCAL VOC) and CUB-200.

Boxes are returned as float arrays [n, 4] (xmin, ymin, xmax, ymax) in pixels of the original
image, 0-based with max exclusive: VOC's 1-based inclusive (xmin, xmax) = (1, 10) covers
pixels 0..9, i.e. [0, 10).

``--val-boxes PATH`` is read by the box reader (``semisup.registry.BOX_FORMATS``) that
recognises it: ``cub`` a file named ``bounding_boxes.txt``, ``voc-xml`` a folder of XML files
(and any path no reader recognises, so its messages say what is missing). A new format is one
function in a file of its own, loaded with ``--plugins MODULE``::

    from semisup.data.boxes import ImageBoxes, register_box_reader
    @register_box_reader("my-boxes", recognises=lambda path: path.suffix == ".myboxes")
    def read_my_boxes(path): ...                # -> {image id (file stem): ImageBoxes}
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from semisup.errors import UserError
from semisup.files import open_regular, read_lines
from semisup.registry import BOX_FORMATS

# The most pixels an image (or an annotation's frame) may have: a decoded image or a Content
# Heatmap at that size takes hundreds of MB; a hostile file claims far more. Larger files are
# counted as unreadable (PIL's decompression-bomb warning is silenced with its EXIF warnings).
MAX_PIXELS = 50_000_000


class BoxFileError(UserError, ValueError):
    pass


@dataclass
class ImageBoxes:
    """size (H, W) of the annotated image; boxes by synset: {wnid: float [n, 4]}."""
    size: tuple[int, int] | None
    by_class: dict[str, np.ndarray]

    def of_class(self, wnid: str) -> np.ndarray:
        return self.by_class.get(wnid, np.zeros((0, 4), dtype=np.float32))


def parse_voc_xml(path: str | Path) -> ImageBoxes:
    """One ImageNet/PASCAL VOC annotation: ``<size>`` then ``<object>`` with ``<name>`` and ``<bndbox>``."""
    path = Path(path)
    try:
        with open_regular(path, BoxFileError) as f:  # a FIFO among 50,000 files must not hang the run
            root = ET.parse(f).getroot()
    except (ET.ParseError, OSError) as err:
        raise BoxFileError(f"{path}: not valid XML ({err}); re-extract the annotation archive") from err
    size = None
    node = root.find("size")
    if node is not None and node.findtext("width") and node.findtext("height"):
        try:
            size = (int(float(node.findtext("height"))), int(float(node.findtext("width"))))
        except (ValueError, OverflowError) as err:
            raise BoxFileError(f"{path}: <size> needs numeric width and height") from err
        if min(size) < 1 or size[0] * size[1] > MAX_PIXELS:
            # Content Heatmap upsamples each heatmap to this size: 60000 x 60000 asked for 14 GB.
            raise BoxFileError(f"{path}: <size> {size[1]} x {size[0]} is not an image's size (at most "
                               f"{MAX_PIXELS // 10**6} megapixels); fix or remove that annotation")
    by_class: dict[str, list] = {}
    for obj in root.iter("object"):
        name, bndbox = obj.findtext("name"), obj.find("bndbox")
        if not name or bndbox is None:
            raise BoxFileError(f"{path}: an <object> lacks <name> or <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as err:
            raise BoxFileError(f"{path}: <bndbox> of {name} needs numeric xmin, ymin, xmax, ymax") from err
        check_box(path, name, xmin - 1, ymin - 1, xmax, ymax)
        by_class.setdefault(name.strip(), []).append([xmin - 1, ymin - 1, xmax, ymax])
    return ImageBoxes(size, {k: np.array(v, dtype=np.float32) for k, v in by_class.items()})


def check_box(where, name: str, xmin: float, ymin: float, xmax: float, ymax: float) -> None:
    """A box must be finite and not empty or inverted: otherwise its image would score CH 0 (or
    NaN) without a word."""
    if not all(np.isfinite(v) for v in (xmin, ymin, xmax, ymax)) or xmax <= xmin or ymax <= ymin:
        raise BoxFileError(
            f"{where}: the box of {name} ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) is empty, inverted or not finite; "
            "fix or remove that annotation"
        )


Reader = Callable[[Path], dict[str, ImageBoxes]]


@dataclass(frozen=True)
class BoxReader:
    """One --val-boxes format: ``read(path) -> {image id (file stem): ImageBoxes}``, for the paths
    ``recognises(path)`` accepts."""
    name: str
    recognises: Callable[[Path], bool]
    read: Reader
    summary: str


# What a path no reader recognises is read as: its own errors say what such a folder needs.
DEFAULT_BOX_FORMAT = "voc-xml"


def register_box_reader(name: str, recognises: Callable[[Path], bool]) -> Callable[[Reader], Reader]:
    """``@register_box_reader("name", recognises=lambda path: ...)`` on ``read(path) -> {id: ImageBoxes}``."""
    def add(read: Reader) -> Reader:
        summary = ((read.__doc__ or name).strip().splitlines() or [name])[0]
        BOX_FORMATS.register(name, BoxReader(name, recognises, read, summary))
        return read
    return add


def _holds_xml(path: Path) -> bool:
    """A folder with an .xml file anywhere below it (stops at the first: ImageNet has 50,000)."""
    return path.is_dir() and next(path.rglob("*.xml"), None) is not None


@register_box_reader("voc-xml", recognises=_holds_xml)
def load_voc_folder(folder: str | Path) -> dict[str, ImageBoxes]:
    """{image id (file stem, e.g. ILSVRC2012_val_00000001): ImageBoxes} for every *.xml below ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BoxFileError(f"--val-boxes {folder}: not a folder of XML files (nor a file a registered box format "
                           "recognises: CUB's bounding_boxes.txt, or a plugin's, loaded with --plugins MODULE)")
    from semisup.data.fileindex import cached_voc_boxes, xml_files
    files = xml_files(folder)
    boxes = {Path(f).stem: parsed for f, parsed in zip(files, cached_voc_boxes(folder, files, parse_voc_xml))}
    if not boxes:
        raise BoxFileError(f"--val-boxes {folder}: no .xml files found")
    return boxes


@register_box_reader("cub", recognises=lambda path: path.is_file() and path.name == "bounding_boxes.txt")
def load_cub_boxes(path: str | Path) -> dict[str, ImageBoxes]:
    """CUB-200-2011's ``bounding_boxes.txt`` (``<id> <x> <y> <width> <height>``) joined with the
    ``images.txt`` beside it (``<id> <class folder>/<file>``); keyed by file stem. The class key
    is the class folder name."""
    path = Path(path)
    images_txt = path.with_name("images.txt")
    if not images_txt.is_file():
        raise BoxFileError(f"{path}: CUB boxes need images.txt beside bounding_boxes.txt")
    names = {}
    for n, line in enumerate(read_lines(images_txt, "CUB images.txt"), 1):
        if line.strip():
            try:
                image_id, rel = line.split()
            except ValueError as err:
                raise BoxFileError(f"{images_txt}:{n}: expected '<id> <class>/<file>'") from err
            names[image_id] = rel
    out = {}
    for n, line in enumerate(read_lines(path, "--val-boxes"), 1):
        if not line.strip():
            continue
        try:
            image_id, x, y, w, h = line.split()
            rel = names[image_id]
        except (ValueError, KeyError) as err:
            raise BoxFileError(
                f"{path}:{n}: expected '<id> <x> <y> <width> <height>' with an id listed in images.txt"
            ) from err
        x, y, w, h = map(float, (x, y, w, h))
        check_box(f"{path}:{n}", rel, x, y, x + w, y + h)
        out[Path(rel).stem] = ImageBoxes(
            None, {Path(rel).parent.name: np.array([[x, y, x + w, y + h]], dtype=np.float32)}
        )
    return out


def box_reader_of(path: str | Path) -> BoxReader:
    """The reader that recognises ``path`` (the VOC folder reader where none does); two that both
    do are an error naming them, never a silent pick."""
    path = Path(path)
    readers = [reader for _, reader in BOX_FORMATS.items() if reader.recognises(path)]
    if len(readers) > 1:
        raise BoxFileError(f"--val-boxes {path}: read by {' and '.join(r.name for r in readers)} alike; "
                           "make one box reader's recognises() tell them apart")
    return readers[0] if readers else BOX_FORMATS.get(DEFAULT_BOX_FORMAT)


def load_boxes(path: str | Path) -> dict[str, ImageBoxes]:
    """{image id (file stem): ImageBoxes} of --val-boxes, by the reader that recognises it (a VOC
    XML folder, CUB's bounding_boxes.txt, a plugin's format)."""
    return box_reader_of(path).read(Path(path))


def box_mask(boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Union of boxes [n, 4] (xmin, ymin, xmax, ymax; pixels, max exclusive) as bool [H, W].
    A pixel is inside when its centre is; coordinates are clipped to the image."""
    mask = torch.zeros(height, width, dtype=torch.bool)
    ys = torch.arange(height) + 0.5
    xs = torch.arange(width) + 0.5
    for xmin, ymin, xmax, ymax in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        mask |= ((ys >= ymin) & (ys < ymax))[:, None] & ((xs >= xmin) & (xs < xmax))[None, :]
    return mask


def scale_boxes(boxes: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Boxes [n, 4] (xmin, ymin, xmax, ymax) in an image of size from_hw, mapped to to_hw."""
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])


# Added by the released CH scripts after normalising the Grad-CAM to sum 1 (``compute_gradcam``).
CH_EPS = 1e-8


def content_heatmap(
    cams: torch.Tensor, boxes: list[np.ndarray], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CH of heatmaps whose images share one original size.

    Args:
        cams: [B, h, w] non-negative heatmaps.
        boxes: B arrays [n_i, 4] in original-image pixels (may be empty: nothing inside).
        size: original (H, W).
    Returns:
        (ch [B], ch_strict [B], zero [B]): float64 fractions of mass inside the boxes under the
        published protocol (map / (sum + 1e-8) + 1e-8 first, so an all-zero map is uniform)
        and with all-zero maps counted as 0; bool, whether the map is all zero.
    """
    cams = cams.float()
    total = cams.sum((1, 2), keepdim=True)
    normalised = cams / (total + CH_EPS) + CH_EPS
    up = F.interpolate(normalised.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1).double()
    masks = torch.stack([box_mask(b, *size) for b in boxes]).to(up.device)
    ch = (up * masks).sum((1, 2)) / up.sum((1, 2))
    zero = total.flatten() <= 0
    return ch, torch.where(zero, torch.zeros_like(ch), ch), zero


def coverage_note(summary: dict) -> str | None:
    """One line on what the box metrics are computed on, from a data bundle's summary
    (``validation``, ``validation_with_boxes``); None where every validation image has boxes."""
    total, boxed = summary.get("validation", 0), summary.get("validation_with_boxes", 0)
    if boxed >= total:
        return None
    if boxed == 0:
        return ("no validation boxes: CH, CH strict, the pointing game and the other box metrics are not computed and "
                "the galleries show heatmaps without boxes (--val-boxes DIR gives VOC XML annotations)")
    return (f"validation boxes for {boxed} of {total} images: CH and the other box metrics are computed on those "
            f"{boxed} only")

