"""A generated ImageNet-layout folder with real JPEG files and VOC XML annotations."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n00000001", "n00000002", "n00000003"]


def save_image(path: Path, rng: np.random.Generator, size=(96, 72), mode="RGB", fmt="JPEG", class_index: int = 0) -> None:
    w, h = size
    # A class-coloured blob on noise, so a tiny model can learn something.
    array = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    array[h // 4: 3 * h // 4, w // 4: 3 * w // 4, class_index % 3] = 220
    image = Image.fromarray(array)
    image = image.convert(mode) if mode != "RGB" else image
    image.save(path, format=fmt)


def voc_xml(size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    w, h = size
    objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                   for name, (x0, y0, x1, y1) in objects)
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


def make_tree(root: Path, per_class: int = 8, val_per_class: int = 3, bad: bool = True) -> dict:
    """train/<wnid>/<wnid>_<k>.JPEG, flat val/ILSVRC2012_val_<k>.JPEG, boxes/<id>.xml.

    With ``bad``: one truncated JPEG, one PNG named .JPEG, one grayscale and one CMYK JPEG,
    and a non-image file."""
    rng = np.random.default_rng(0)
    info = dict(truncated=None, train=[], val=[])
    for c, wnid in enumerate(WNIDS):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for k in range(per_class):
            path = folder / f"{wnid}_{k}.JPEG"
            size = (int(rng.integers(80, 140)), int(rng.integers(64, 110)))
            save_image(path, rng, size, class_index=c)
            info["train"].append(path)
    if bad:
        (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
        trunc = root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
        trunc.write_bytes(trunc.read_bytes()[:200])
        info["truncated"] = trunc
        save_image(root / "train" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG", rng, fmt="PNG", class_index=1)
        save_image(root / "train" / WNIDS[2] / f"{WNIDS[2]}_0.JPEG", rng, mode="L", class_index=2)
        save_image(root / "train" / WNIDS[2] / f"{WNIDS[2]}_1.JPEG", rng, mode="CMYK", class_index=2)
    (root / "val").mkdir()
    (root / "boxes").mkdir()
    k = 0
    for c, wnid in enumerate(WNIDS):
        for _ in range(val_per_class):
            k += 1
            image_id = f"ILSVRC2012_val_{k:08d}"
            size = (int(rng.integers(80, 140)), 72 if k % 2 else 90)
            save_image(root / "val" / f"{image_id}.JPEG", rng, size, class_index=c)
            w, h = size
            box = (w // 4 + 1, h // 4 + 1, 3 * w // 4, 3 * h // 4)
            (root / "boxes" / f"{image_id}.xml").write_text(voc_xml(size, [(wnid, box)]))
            info["val"].append((image_id, wnid, size, box))
    return info
