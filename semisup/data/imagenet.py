"""ImageNet-layout folders (``train/<wnid>/*.JPEG``, ``val/``) as a DataBundle.

Works for any ImageFolder dataset (CUB-200, FGVC-Aircraft, Cars-196, Flowers-102 in class
folders). Class indices are the sorted class-folder names, exactly as torchvision's
ImageFolder assigns them; validation classes always come from synset ids (folder names or
the XML ``<name>``), never from the devkit's numeric labels, whose order differs.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from semisup.data.boxes import load_boxes
from semisup.data.bundle import DataBundle, EvalSet
from semisup.data.datasets import DECODE_ERRORS, FileSource, unlabeled_indices
from semisup.data.fileindex import PathTable, checked_sizes, class_folder_index
from semisup.data.settings import DataSettings
from semisup.data.splits import SPLITS_DIR, SplitError, dataset_digest, resolve_labeled, split_entries, synset_of
from semisup.errors import UserError
from semisup.files import read_lines

log = logging.getLogger(__name__)


# Unlabeled files the dry run decodes (a random sample): the rate of unreadable ones shows.
DRY_RUN_UNLABELED_SAMPLE = 2000


class DatasetLayoutError(UserError, ValueError):
    pass


_memo: dict | None = None


@contextlib.contextmanager
def shared_scans():
    """Inside this block folder scans, box files and decode checks are done once per argument:
    the checks before queueing a sweep build the same dataset for every grid point."""
    global _memo
    previous, _memo = _memo, {}
    try:
        yield
    finally:
        _memo = previous


def _memoized(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _memo is None:
            return fn(*args, **kwargs)
        key = (fn.__name__, tuple(tuple(a) if isinstance(a, list) else a for a in args), tuple(sorted(kwargs.items())))
        if key not in _memo:
            _memo[key] = fn(*args, **kwargs)
        return _memo[key]
    return wrapper


_load_boxes = _memoized(load_boxes)


def is_image_file(name: str) -> bool:
    """An image by its extension, not a macOS AppleDouble companion (``._name.JPEG``: an archive made
    on a Mac holds one beside every file, metadata that no decoder reads: counted as skipped non-image
    files, not as thousands of unreadable images that stop the run past --max-bad-fraction)."""
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith("._")


@_memoized
def scan_class_folders(root: Path) -> tuple[list[str], PathTable, np.ndarray, int]:
    """(classes, paths, labels [N], skipped non-image files) of ``root/<class>/<file>``,
    in ImageFolder's order, from the cached file index where the folders are unchanged
    (:mod:`semisup.data.fileindex`). Empty class folders are an error, as in ImageFolder."""
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: no such folder (expected class folders like {root}/n01440764/)")
    classes, names_by_class, skipped = class_folder_index(root, is_image_file)
    if not classes:
        raise DatasetLayoutError(f"{root}: no class folders found")
    empty = [wnid for wnid, names in zip(classes, names_by_class) if not names]
    counts = [len(names) for names in names_by_class]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    paths = PathTable.of_folders(str(root), classes, names_by_class)
    if empty:
        raise DatasetLayoutError(f"{root}: {len(empty)} class folders hold no image files: {empty[:5]} "
                                 "(remove them, or the class indices will not match the 1000 ImageNet classes)")
    return classes, paths, labels, skipped


def _missing_error(what: str, missing: list[str], source: Path) -> SplitError:
    return SplitError(f"{source}: {len(missing)} {what} not found in the data folder, e.g. {missing[:10]}; "
                      "the run would silently train on fewer images. Check --data and the split file.")


def select_labeled(names: list[str], classes: list[str], split: list[str], split_path: Path) -> np.ndarray:
    """Indices (into ``names``) of the split's files; an error naming the first missing ones."""
    if names and "/" in names[0] and not any("/" in entry for entry in split):
        raise SplitError(f"{split_path}: lists file names, but this folder's file names do not begin with their "
                         "class: each line is <class folder>/<file name> here (e.g. "
                         f"{names[0]})")
    known = set(classes)
    missing_synsets = sorted({synset_of(n) for n in split} - known)
    if missing_synsets:
        raise _missing_error("synsets", missing_synsets, split_path)
    position = {n: i for i, n in enumerate(names)}
    missing = [n for n in split if n not in position]
    if missing:
        raise _missing_error("files", missing, split_path)
    return np.array(sorted(position[n] for n in split), dtype=np.int64)


@_memoized
def read_sizes(paths: list[str], workers: int = 16, decode: bool = False) -> list[tuple[int, int] | None]:
    """(H, W) of each file, None for unreadable ones. From the header alone, or with ``decode``
    by decoding the whole file (at 1/8 scale for JPEGs: every byte is still read, so
    truncation shows, at a fraction of the cost)."""
    def size(path):
        try:
            with Image.open(path) as img:
                hw = img.size[1], img.size[0]
                if decode:
                    img.draft("RGB", (max(1, hw[1] // 8), max(1, hw[0] // 8)))
                    img.load()
                return hw
        except DECODE_ERRORS:
            return None
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(size, paths, chunksize=256))


def build_validation(settings: DataSettings, data: Path, classes: list[str]) -> tuple[EvalSet, dict]:
    val_root = data / settings.val_dir
    boxes_by_id = _load_boxes(settings.val_boxes) if settings.val_boxes else None
    class_index = {c: i for i, c in enumerate(classes)}
    subdirs = [e.name for e in os.scandir(val_root) if e.is_dir()] if val_root.is_dir() else []
    if subdirs:  # val/<wnid>/<file>
        unknown = sorted(set(subdirs) - set(classes))
        if unknown:
            raise DatasetLayoutError(f"{val_root}: class folders not in train/: {unknown[:5]}")
        paths, wnids = [], []
        for wnid in sorted(subdirs):
            files = sorted(e.name for e in os.scandir(val_root / wnid) if e.is_file() and is_image_file(e.name))
            paths += [str(val_root / wnid / f) for f in files]
            wnids += [wnid] * len(files)
    elif val_root.is_dir():  # flat val/ with labels from --val-labels or from the XML annotations
        files = sorted(e.name for e in os.scandir(val_root) if e.is_file() and is_image_file(e.name))
        paths = [str(val_root / f) for f in files]
        wnids = _flat_val_labels(settings, files, boxes_by_id, val_root) if files else []
    else:
        raise DatasetLayoutError(f"{val_root}: no validation folder")
    if not paths:
        raise DatasetLayoutError(f"{val_root}: no validation images (a run would finish with top-1 0.0); put the "
                                 "validation set there, or name its folder with --val-dir")
    unknown = sorted({w for w in wnids if w not in class_index})
    if unknown:
        raise DatasetLayoutError(f"{val_root}: validation labels name synsets not in train/: {unknown[:5]}")
    labels = [class_index[w] for w in wnids]
    boxes, sizes = None, None
    with_boxes = 0
    if boxes_by_id is not None:
        boxes, sizes = [], []
        header_sizes = None
        for i, (path, wnid) in enumerate(zip(paths, wnids)):
            entry = boxes_by_id.get(Path(path).stem)
            boxes.append(entry.of_class(wnid) if entry is not None and len(entry.of_class(wnid)) else None)
            with_boxes += boxes[-1] is not None
            if entry is not None and entry.size is not None:
                sizes.append(entry.size)
            else:
                header_sizes = header_sizes or read_sizes(paths)
                sizes.append(header_sizes[i] or (1, 1))
    source = FileSource(paths, labels)
    return EvalSet(source, boxes, sizes or []), dict(validation=len(paths), validation_with_boxes=with_boxes)


def _flat_val_labels(settings: DataSettings, files: list[str], boxes_by_id, val_root: Path) -> list[str]:
    if settings.val_labels:
        table = {}
        for n, line in enumerate(read_lines(Path(settings.val_labels), "--val-labels"), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].startswith("n"):
                raise DatasetLayoutError(
                    f"{settings.val_labels}:{n}: expected '<file name> <wnid>' (synset ids, not the devkit's numbers)"
                )
            if parts[0] in table:
                raise DatasetLayoutError(f"{settings.val_labels}:{n}: {parts[0]} is listed a second time (which "
                                         "label is meant?); keep one line per file")
            table[parts[0]] = parts[1]
        missing = [f for f in files if f not in table]
        if missing:
            raise DatasetLayoutError(
                f"{settings.val_labels}: {len(missing)} validation files have no label, e.g. {missing[:5]}"
            )
        return [table[f] for f in files]
    if boxes_by_id is not None:
        wnids = []
        for f in files:
            entry = boxes_by_id.get(Path(f).stem)
            if entry is None or not entry.by_class:
                raise DatasetLayoutError(
                    f"{val_root}/{f}: no annotation in --val-boxes to take its synset from; pass --val-labels"
                )
            wnids.append(next(iter(entry.by_class)))
        return wnids
    raise DatasetLayoutError(
        f"{val_root} is flat: pass --val-labels FILE ('<file> <wnid>' lines) or --val-boxes with the XML annotations, "
        "or sort val/ into class folders"
    )


def build_folder_bundle(settings: DataSettings, decode_check: bool = False) -> DataBundle:
    data = Path(settings.data)
    classes, paths, labels, skipped = scan_class_folders(data / "train")
    names = paths.names()
    if settings.num_classes is not None and settings.num_classes != len(classes):
        raise DatasetLayoutError(
            f"--num-classes {settings.num_classes} but {data / 'train'} has {len(classes)} class folders"
        )
    if settings.full_supervision and not settings.split_file:
        labeled, split_path = np.arange(len(paths)), None
    else:
        splits_dir = Path(settings.splits_dir) if settings.splits_dir else SPLITS_DIR
        entries = split_entries(classes, names, labels)
        split, split_path = resolve_labeled(entries, settings, splits_dir)
        labeled = select_labeled(entries, classes, split, split_path)
    unlabeled = unlabeled_indices(settings, len(paths), labeled)
    train = FileSource(paths, labels)
    val, val_summary = build_validation(settings, data, classes)
    summary = dict(
        dataset=str(data), classes=len(classes), split_file=str(split_path) if split_path else "all of train/",
        labeled=len(labeled), unlabeled=0 if unlabeled is None else len(unlabeled), **val_summary,
        non_image_files_skipped=skipped,
        # What the dataset is, whatever its folder is called: its training and validation files' names.
        dataset_digest=dataset_digest(names + [os.path.basename(p) for p in val.source.paths]),
    )
    if decode_check:
        # Decode the labeled and validation images now rather than hours into the run, and a
        # sample of the unlabeled stream (all of it would take as long as an epoch of ImageNet).
        check = functools.partial(read_sizes, decode=True)
        sizes = checked_sizes(data, [paths[i] for i in labeled] + list(val.source.paths), check)
        summary["bad_files_found"] = sum(s is None for s in sizes)
        if unlabeled is not None:
            sample = np.random.default_rng(0).choice(
                unlabeled, size=min(len(unlabeled), DRY_RUN_UNLABELED_SAMPLE), replace=False
            )
            decoded = checked_sizes(data, [paths[i] for i in sample], check)
            summary["unlabeled_sample_decoded"] = len(decoded)
            summary["unlabeled_sample_unreadable"] = sum(s is None for s in decoded)
    return DataBundle(classes, train, labeled, train if unlabeled is not None else None, unlabeled, val, summary)
