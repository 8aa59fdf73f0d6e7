"""Ground-truth boxes for Content Heatmap: ImageNet validation XML (PASCAL VOC) and CUB-200.

Boxes are returned as float arrays [n, 4] (xmin, ymin, xmax, ymax) in pixels of the original
image, 0-based with max exclusive: VOC's 1-based inclusive (xmin, xmax) = (1, 10) covers
pixels 0..9, i.e. [0, 10).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semisup.errors import UserError


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
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise BoxFileError(f"{path}: not valid XML ({err}); re-extract the annotation archive") from err
    size = None
    node = root.find("size")
    if node is not None and node.findtext("width") and node.findtext("height"):
        size = (int(float(node.findtext("height"))), int(float(node.findtext("width"))))
    by_class: dict[str, list] = {}
    for obj in root.iter("object"):
        name, bndbox = obj.findtext("name"), obj.find("bndbox")
        if not name or bndbox is None:
            raise BoxFileError(f"{path}: an <object> lacks <name> or <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as err:
            raise BoxFileError(f"{path}: <bndbox> of {name} needs numeric xmin, ymin, xmax, ymax") from err
        by_class.setdefault(name.strip(), []).append([xmin - 1, ymin - 1, xmax, ymax])
    return ImageBoxes(size, {k: np.array(v, dtype=np.float32) for k, v in by_class.items()})


def load_voc_folder(folder: str | Path) -> dict[str, ImageBoxes]:
    """{image id (file stem, e.g. ILSVRC2012_val_00000001): ImageBoxes} for every *.xml below ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BoxFileError(f"--val-boxes {folder}: not a folder of XML files")
    boxes = {p.stem: parse_voc_xml(p) for p in sorted(folder.rglob("*.xml"))}
    if not boxes:
        raise BoxFileError(f"--val-boxes {folder}: no .xml files found")
    return boxes


def load_cub_boxes(path: str | Path) -> dict[str, ImageBoxes]:
    """CUB-200-2011's ``bounding_boxes.txt`` (``<id> <x> <y> <width> <height>``) joined with the
    ``images.txt`` beside it (``<id> <class folder>/<file>``); keyed by file stem. The class key
    is the class folder name."""
    path = Path(path)
    images_txt = path.with_name("images.txt")
    if not images_txt.is_file():
        raise BoxFileError(f"{path}: CUB boxes need images.txt beside bounding_boxes.txt")
    names = {}
    for n, line in enumerate(images_txt.read_text().splitlines(), 1):
        if line.strip():
            try:
                image_id, rel = line.split()
            except ValueError as err:
                raise BoxFileError(f"{images_txt}:{n}: expected '<id> <class>/<file>'") from err
            names[image_id] = rel
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            image_id, x, y, w, h = line.split()
            rel = names[image_id]
        except (ValueError, KeyError) as err:
            raise BoxFileError(f"{path}:{n}: expected '<id> <x> <y> <width> <height>' with an id listed in images.txt") from err
        x, y, w, h = map(float, (x, y, w, h))
        out[Path(rel).stem] = ImageBoxes(None, {Path(rel).parent.name: np.array([[x, y, x + w, y + h]], dtype=np.float32)})
    return out


def load_boxes(path: str | Path) -> dict[str, ImageBoxes]:
    """A VOC XML folder, or CUB's bounding_boxes.txt."""
    path = Path(path)
    if path.is_file() and path.name == "bounding_boxes.txt":
        return load_cub_boxes(path)
    return load_voc_folder(path)
