"""A cached copy of the validation images as top-1 sees them (``--val-cache DIR``).

Top-1 runs every epoch over the same images with the same deterministic transform (decode,
resize the shorter side to --resize-size, centre-crop --image-size), so the crops are decoded
once and kept as one uint8 array [N, 3, S, S] on disk (ImageNet at 224: 7.5 GB); every later
evaluation reads them instead of decoding 50,000 JPEGs. The crops are the decoded ones, byte for
byte, so every number is unchanged. Content Heatmap (other sizes) and the kNN bank still decode.

``val-<key>.u8`` holds the array, ``val-<key>.json`` its manifest. The key digests what the
crops depend on (each file's path, size and modification time, or the images of an in-memory
source; the sizes; the image list): a changed validation set gets a new cache. Both files are
written under temporary names and renamed, the manifest last; a cache whose manifest or size is
wrong is rebuilt, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from semisup.files import parse_json, read_text, write_text_atomic

log = logging.getLogger(__name__)

VERSION = 1  # of the cached transform; bumped when EvalDataset's crops change


def cache_key(dataset) -> str:
    """Digest of what the crops of ``dataset`` (an EvalDataset with a crop) depend on."""
    digest = hashlib.sha256(json.dumps(
        dict(version=VERSION, resize=dataset.resize, crop=dataset.crop, indices=dataset.indices.tolist())).encode())
    source = dataset.source
    if hasattr(source, "paths"):
        for index in dataset.indices:
            path = source.paths[int(index)]
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{int(source.labels[int(index)])}\n".encode())
    else:  # an in-memory source (the demo)
        digest.update(np.ascontiguousarray(source.images).tobytes())
        digest.update(np.asarray(source.labels).tobytes())
    return digest.hexdigest()[:20]


class CachedEvalDataset(Dataset):
    """Items of the EvalDataset it was built from (image uint8 [3, S, S], label, index, bad),
    read from the memory-mapped array."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self.labels, self.indices = manifest["labels"], manifest["indices"]
        self.bad = set(manifest["bad"])
        self._array = None

    def __len__(self):
        return len(self.indices)

    def __getstate__(self):  # a loader worker maps the file itself, never receives a copy of it
        return {**self.__dict__, "_array": None}

    def __getitem__(self, i):
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=tuple(self.manifest["shape"]))
        image = torch.from_numpy(np.array(self._array[i]))
        return dict(image=image, label=self.labels[i], index=self.indices[i], bad=int(i in self.bad))


def open_cache(folder: Path, dataset) -> CachedEvalDataset | None:
    """The cache of ``dataset`` in ``folder`` when it is there and whole; None otherwise."""
    key = cache_key(dataset)
    data, meta = folder / f"val-{key}.u8", folder / f"val-{key}.json"
    if not meta.exists():
        return None
    try:
        manifest = parse_json(read_text(meta))
        expected = int(np.prod(manifest["shape"]))
        if manifest["key"] != key or data.stat().st_size != expected or len(manifest["labels"]) != len(dataset):
            raise ValueError("its size or key does not match")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("validation cache %s is damaged (%s); rebuilding it", meta, err)
        return None
    log.info("validation cache: top-1 reads %s (%d crops)", data, len(dataset))
    return CachedEvalDataset(data, manifest)


def build_cache(folder: Path, dataset, batches) -> CachedEvalDataset:
    """Decode every crop of ``dataset`` once (``batches``: a loader over it, in order, of the
    EvalDataset's items) into ``folder``; returns the cache."""
    key, n, crop = cache_key(dataset), len(dataset), dataset.crop
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"val-{key}.u8"
    tmp = data.with_name(f".{data.name}.tmp{os.getpid()}")
    shape = (n, 3, crop, crop)
    try:
        # The whole file is allocated before it is mapped: on a disk with too little space that is an
        # OSError (ENOSPC) now, not a SIGBUS when a page of the map is first written.
        with open(tmp, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, int(np.prod(shape)))
        array = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=shape)
        labels, indices, bad, filled = [], [], [], 0
        for batch in batches:
            images = batch["image"].numpy()
            array[filled:filled + len(images)] = images
            labels += batch["label"].tolist()
            indices += batch["index"].tolist()
            bad += [filled + k for k, b in enumerate(batch["bad"].tolist()) if b]
            filled += len(images)
        if filled != n:
            raise RuntimeError(f"the loader gave {filled} of {n} validation crops")
        array.flush()
        del array
        os.replace(tmp, data)
    except BaseException:  # a full disk: no half-written array is left behind
        tmp.unlink(missing_ok=True)
        raise
    manifest = dict(key=key, shape=list(shape), labels=labels, indices=indices, bad=bad)
    write_text_atomic(folder / f"val-{key}.json", json.dumps(manifest))
    log.info("validation cache written: %s (%d crops, %.1f MB)", data, n, data.stat().st_size / 1e6)
    return CachedEvalDataset(data, manifest)
