"""Datasets, the two-stream sampler and data loaders, shared by the demo and ImageNet.

A *source* is an indexable collection of images with labels (``ArraySource`` for the demo,
``FileSource`` for image files). Training datasets are indexed by ``(index, seed)`` pairs that
``StreamSampler`` yields: every augmentation is drawn from that per-draw seed, so a run
resumed from a checkpoint sees exactly the images and crops an uninterrupted one would.
"""
from __future__ import annotations

import logging
import math
import signal
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from semisup.config import DEMO_VERSION
from semisup.data import transforms as T
from semisup.data.boxes import MAX_PIXELS
from semisup.data.bundle import DataBundle, EvalSet  # noqa: F401 (re-exported: the readers' callers import them here)
from semisup.data.fileindex import PathTable
from semisup.data.settings import DataSettings
from semisup.data.splits import dataset_digest, stratified_choice
from semisup.errors import UsageError, UserError

log = logging.getLogger(__name__)

# Images longer than this many times their width (or the reverse) are counted as unreadable.
MAX_ASPECT = 20
# Errors PIL and friends raise on truncated, corrupt or non-image files.
DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class NoReadableImage(UserError, RuntimeError):
    """Every image of a stream failed to decode."""


class ArraySource:
    """In-memory images uint8 [N, H, W, 3] with labels [N] (the demo)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        return f"image {index}"

    def load(self, index: int, min_side: int | None = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[index])).permute(2, 0, 1)

    def size(self, index: int) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])


class FileSource:
    """Image files with labels. ``load`` decodes once with PIL, converting grayscale, CMYK and
    palette images to RGB and reading PNG or other formats whatever their extension."""

    def __init__(self, paths, labels: list[int] | np.ndarray):
        # Numpy arrays, not a list of str: loader workers read them without copying the parent's
        # memory page by page (semisup.data.fileindex.PathTable).
        self.paths = paths if isinstance(paths, PathTable) else PathTable(paths)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index]

    def load(self, index: int, min_side: int | None = None) -> torch.Tensor:
        """[3, H, W] uint8. RGB and grayscale JPEGs go through torchvision's libjpeg-turbo
        decoder (1.8x PIL's speed on ImageNet-like files, ``semisup-bench loader``);
        with ``min_side``, a JPEG at least twice that size is decoded by PIL at 1/2, 1/4 or 1/8
        scale instead (libjpeg's DCT scaling, far cheaper), never below ``min_side``."""
        path = self.paths[index]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings on odd ImageNet files
            with Image.open(path) as img:
                w, h = img.size
                if max(w, h) > MAX_ASPECT * min(w, h):
                    # Resizing a 4000 x 1 image to a shorter side of 448 makes a 3 x 448 x 1,792,000
                    # tensor: such files are counted as unreadable instead.
                    raise ValueError(f"{w} x {h} pixels: an aspect ratio beyond {MAX_ASPECT}:1")
                if w * h > MAX_PIXELS:  # a 136 KB PNG can hold 12000 x 12000 pixels (1.5 GB decoded)
                    raise ValueError(f"{w} x {h} pixels: beyond {MAX_PIXELS // 10**6} megapixels")
                if img.mode in WIDE_GRAY:
                    return _wide_gray(img)
                if img.format == "JPEG" and img.mode in ("RGB", "L") and (min_side is None or min(w, h) < 2 * min_side):
                    decoded = _decode_jpeg_file(path, (h, w))
                    if decoded is not None:
                        return decoded
                if min_side is not None and img.format == "JPEG":
                    scale = min(w, h) / min_side
                    img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
                array = np.asarray(img.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def size(self, index: int) -> tuple[int, int]:
        """(H, W) from the file header, without decoding."""
        with Image.open(self.paths[index]) as img:
            return img.size[1], img.size[0]


WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16-bit, 32-bit and float grayscale PNGs and TIFFs


def _wide_gray(img: Image.Image) -> torch.Tensor:
    """[3, H, W] uint8 from a grayscale image of more than 8 bits, scaled by its type's range (PIL's
    convert("RGB") clips such values at 255: a 16-bit PNG came out white)."""
    array = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or array.max(initial=0) <= 65535 else 2.0**32 - 1
    gray = np.clip(np.rint(array / top * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(gray, (3, *gray.shape))))


def _decode_jpeg_file(path: str, hw: tuple[int, int]) -> torch.Tensor | None:
    """[3, H, W] uint8 by torchvision's decoder, or None where it refuses the file or returns
    another size (truncated data: PIL then reports the file as unreadable)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            image = decode_jpeg(data, mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    return image if tuple(image.shape[-2:]) == tuple(hw) else None


def load_good(
    source, indices: np.ndarray, position: int, min_side: int | None = None, read=None
) -> tuple[object, int, int]:
    """Decode ``indices[position]``, or the next decodable image of ``indices`` after it (its own
    split: an unreadable labeled image is replaced by another labeled one, never by a file
    outside the split); returns (image, its source index, how many unreadable files were
    skipped). A long run never dies on one bad file. ``read(i)`` replaces the decode (the GPU
    path reads bytes instead)."""
    read = read or (lambda i: source.load(i, min_side=min_side))
    bad = 0
    for attempt in range(len(indices)):
        i = int(indices[(position + attempt) % len(indices)])
        try:
            return read(i), i, bad
        except DECODE_ERRORS as err:
            bad += 1
            log.warning("skipping unreadable image %s (%s)", source.name(i), err)
    raise NoReadableImage(f"no readable image among this stream's {len(indices)} images (the warnings above name "
                          "them); check the dataset")


class TrainDataset(Dataset):
    """Training samples for one stream, indexed by ``(index, seed)``, as the released
    ``datasets/imagefolder_cgc_ssl.py`` builds them from one decode of the file.

    crop: ``image`` = RandomResizedCrop(size, scale) + flip, the cross-entropy input.
    pair: ``view`` = Resize(resize) + CenterCrop(size), and ``aug`` = the CGC transform of the
    view (RandomResizedCrop back to size + flip) with the ``box`` and ``flip`` relating them.

    Each item: dict(label int, bad int, and image [3,S,S] uint8 with crop; view, aug [3,S,S]
    uint8, box [4] float, flip bool (whether the loss mirrors the view's heatmap) with pair).
    ``flip_protocol``: how the pair's mirror is drawn (``transforms.draw_pair``); ``draft``: decode
    large JPEGs at a reduced scale for the view (faster; pixels differ from the full decode).
    """

    def __init__(self, source, indices: np.ndarray, size: int, resize: int, scale_min: float, crop: bool, pair: bool,
                 flip_protocol: str = "consistent", draft: bool = False):
        if not (crop or pair):
            raise ValueError("a training stream needs the crop, the pair or both")
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.size, self.resize, self.scale = size, resize, (scale_min, 1.0)
        self.crop, self.pair = crop, pair
        self.flip_protocol, self.draft = flip_protocol, draft

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, seed = key
        generator = torch.Generator().manual_seed(seed)
        # With --decode cpu-draft, where only the resized view is needed (no random crop), the JPEG
        # decoder may shrink large files on the fly. Random crops need full resolution.
        draft = self.draft and not self.crop
        image, index, bad = load_good(self.source, self.indices, position, min_side=self.resize if draft else None)
        item = dict(label=int(self.source.labels[index]), bad=bad)
        if self.crop:
            item["image"] = T.random_crop_flip(image, self.size, self.scale, generator)
        if self.pair:
            item["view"] = T.center_view(image, self.resize, self.size)
            item["aug"], item["box"], item["flip"] = T.cgc_pair(item["view"], self.scale, generator, self.flip_protocol)
        return item


def _draw_seed(seed: int, stream: int, rank: int, position: int) -> int:
    return (seed * 2_654_435_761 + stream * 97_531 + rank * 1_000_003 + position) % (2**63)


class _Shards:
    """Per pass over the data a fresh permutation seeded by (seed, stream, pass) — the
    "set_epoch" reshuffle — split across processes ``rank::world``, padded by wrapping so all
    shards have equal length (as DistributedSampler pads)."""

    def __init__(self, num_samples: int, seed: int, stream: int, rank: int, world: int):
        if num_samples == 0:
            raise ValueError("empty dataset")
        self.n, self.seed, self.stream, self.rank, self.world = num_samples, seed, stream, rank, world
        self.shard_len = math.ceil(num_samples / world)
        self._cached_pass, self._cached_shard = None, None

    def shard(self, pass_index: int) -> torch.Tensor:
        if self._cached_pass != pass_index:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.stream * 7_919 + pass_index)
            perm = torch.randperm(self.n, generator=g)
            perm = perm.repeat(math.ceil(self.shard_len * self.world / self.n))[: self.shard_len * self.world]
            self._cached_pass, self._cached_shard = pass_index, perm[self.rank::self.world]
        return self._cached_shard


class StreamSampler(_Shards):
    """Endless batches of ``(position, seed)`` for one process of the unlabeled stream.

    The stream never restarts: it walks through one permutation after another, position
    ``start_batch * batch`` being where a resumed run continues (the released loop instead
    re-created its shuffled loader each epoch: the same distribution of images). Each draw's
    augmentation seed depends only on (seed, stream, rank, position).
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, stream: int, rank: int = 0, world: int = 1,
        start_batch: int = 0,
    ):
        super().__init__(num_samples, seed, stream, rank, world)
        self.batch_size, self.start_batch = batch_size, start_batch

    def __iter__(self):
        position = self.start_batch * self.batch_size
        while True:
            yield [
                (
                    int(self.shard(p // self.shard_len)[p % self.shard_len]),
                    _draw_seed(self.seed, self.stream, self.rank, p),
                )
                for p in range(position, position + self.batch_size)
            ]
            position += self.batch_size


class EpochSampler(_Shards):
    """Batches of ``(position, seed)`` for one process of the labeled stream, epoch by epoch.

    An epoch is one pass over this process' shard in batches of ``batch_size``, the last one
    partial: ``len(train_loader)`` of the released loop (12,811 images at 128: 101 steps).
    Endless; ``start_batch`` counts batches from the start of training, so a resumed run
    continues mid-epoch.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, stream: int, rank: int = 0, world: int = 1,
        start_batch: int = 0,
    ):
        super().__init__(num_samples, seed, stream, rank, world)
        self.batch_size, self.start_batch = batch_size, start_batch
        self.batches_per_epoch = math.ceil(self.shard_len / batch_size)

    def __iter__(self):
        k = self.start_batch
        while True:
            epoch, j = divmod(k, self.batches_per_epoch)
            shard = self.shard(epoch)
            positions = range(j * self.batch_size, min((j + 1) * self.batch_size, self.shard_len))
            yield [
                (int(shard[p]), _draw_seed(self.seed, self.stream, self.rank, epoch * self.shard_len + p))
                for p in positions
            ]
            k += 1


def make_loader(dataset: Dataset, sampler, workers: int, pin_memory: bool, collate_fn=None) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory, collate_fn=collate_fn,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=leave_stop_signals_to_the_main_process)


def leave_stop_signals_to_the_main_process(worker_id: int) -> None:
    """A loader worker ignores SIGTERM, SIGINT and SIGUSR2: they are the main process's to act on
    (a checkpoint, then a stop that ends its workers itself). Slurm sends them to every process of
    a job step and Ctrl-C to the whole foreground group; PyTorch's own SIGTERM handler in a worker
    re-raises a signal not sent by its parent, and the worker's death ends the run before its
    checkpoint ("DataLoader worker ... is killed by signal: Terminated")."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


class EvalDataset(Dataset):
    """Validation images resized so the shorter side is ``resize``, then center-cropped to
    ``crop`` (top-1/top-5: 256 and 224) or, with ``crop=None``, not cropped (Content Heatmap).
    Items: dict(image uint8 [3, H', W'], label, index, bad). ``sizes`` (the split's original
    (H, W) per source index) give an unreadable image's black stand-in its size, so that it
    stacks with the images of its size group (Content Heatmap)."""

    def __init__(self, source, resize: int, crop: int | None = None, indices=None, sizes=None):
        self.source, self.resize, self.crop, self.sizes = source, resize, crop, sizes
        self.indices = np.arange(len(source)) if indices is None else np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = int(self.indices[i])
        recorded = self.sizes[index] if self.sizes else None
        image, bad = _eval_load(self.source, index, recorded)
        mismatch = 0
        if self.crop is None and recorded is not None and not bad and tuple(image.shape[-2:]) != tuple(recorded):
            # Content Heatmap scores the map in the annotation's frame, and batches the images of one
            # recorded size together: a file of another size is not the image its boxes describe.
            log.warning("validation image %s is %d x %d, but its annotation says %d x %d: evaluated as unreadable",
                        self.source.name(index), image.shape[-1], image.shape[-2], recorded[1], recorded[0])
            image, bad, mismatch = torch.zeros(3, *recorded, dtype=torch.uint8), 1, 1
        if self.crop is not None:
            image = T.center_view(image, self.resize, self.crop)
        elif min(image.shape[-2:]) != self.resize:
            image = T.TF.resize(image, [self.resize], antialias=True)
        return dict(image=image, label=int(self.source.labels[index]), index=index, bad=bad, mismatch=mismatch)


def _eval_load(source, index: int, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, int]:
    """Validation images are never substituted (that would change the benchmark): an unreadable
    one is evaluated as a black image (of its recorded ``size``, else 32 x 32), which counts as a
    miss, and is reported."""
    try:
        return source.load(index), 0
    except DECODE_ERRORS as err:
        log.warning("unreadable validation image %s (%s)", source.name(index), err)
        return torch.zeros(3, *(size or (32, 32)), dtype=torch.uint8), 1


def build_fgvc_aircraft_bundle(settings: DataSettings) -> DataBundle:
    """FGVC-Aircraft in its released layout, read by torchvision's ``FGVCAircraft`` (variants,
    trainval / test), for full supervision; no boxes (the released code measures CH on CUB only)."""
    from torchvision.datasets import FGVCAircraft
    try:
        train, test = (
            FGVCAircraft(settings.data, split=split, annotation_level="variant") for split in ("trainval", "test")
        )
    except (RuntimeError, OSError, KeyError, ValueError) as err:
        from semisup.errors import UserError
        raise UserError(
            f"--data {settings.data}: not an FGVC-Aircraft tree (expected {settings.data}/fgvc-aircraft-2013b/data/"
            f"...: {type(err).__name__}: {err})"
        ) from err
    if not settings.full_supervision:
        from semisup.errors import UsageError
        raise UsageError(
            "--data-format fgvc-aircraft is a full-supervision dataset: use --labeled-fraction 1.0 (or --recipe"
            " aircraft)"
        )
    source = FileSource([str(p) for p in train._image_files], train._labels)
    val_source = FileSource([str(p) for p in test._image_files], test._labels)
    summary = dict(
        dataset=str(settings.data), format="fgvc-aircraft", classes=len(train.classes), labeled=len(source),
        unlabeled=0,
        validation=len(val_source), validation_with_boxes=0,
        dataset_digest=dataset_digest(source.paths.names() + val_source.paths.names()),
    )
    return DataBundle(
        list(train.classes), source, np.arange(len(source)), None, None, EvalSet(val_source, None), summary
    )


def build_demo_bundle(settings: DataSettings) -> DataBundle:
    """The embedded demo, split into labeled and unlabeled streams like ImageNet."""
    from semisup.data.demo import load_demo

    demo = load_demo(settings.demo_cache, size=settings.image_size)
    train = ArraySource(demo.train.images, demo.train.labels)
    labeled = _demo_labeled_indices(demo.train.labels, settings.labeled_fraction)
    unlabeled = unlabeled_indices(settings, len(train), labeled)
    val_source = ArraySource(demo.val.images, demo.val.labels)
    val = EvalSet(
        val_source, [b[None].astype(np.float32) for b in demo.val.boxes],
        [tuple(demo.val.images.shape[1:3])] * len(val_source),
    )
    summary = dict(
        dataset="demo", classes=len(demo.classes), labeled=len(labeled),
        unlabeled=0 if unlabeled is None else len(unlabeled), validation=len(val_source),
        validation_with_boxes=len(val_source), bad_files=0, dataset_digest=f"demo-v{DEMO_VERSION}",
    )
    return DataBundle(demo.classes, train, labeled, train if unlabeled is not None else None, unlabeled, val, summary)


def _demo_labeled_indices(labels: np.ndarray, fraction: float) -> np.ndarray:
    """A class-stratified labeled subset of the demo's training split. The split seed is fixed
    (as the SimCLR ImageNet files are fixed), so runs with different seeds share one subset."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    return np.sort(np.array(stratified_choice(groups, fraction, np.random.default_rng(12345))))


def unlabeled_indices(settings: DataSettings, count: int, labeled: np.ndarray) -> np.ndarray | None:
    """Positions of the unlabeled stream among ``count`` training images: all of them, or those
    outside the labeled subset (--unlabeled); None where no pair is formed on unlabeled images."""
    if settings.full_supervision or not settings.forwards_pairs:
        return None
    if settings.unlabeled == "all":
        return np.arange(count)
    rest = np.setdiff1d(np.arange(count), labeled)
    if not len(rest):
        raise UsageError(f"--unlabeled rest: all {count} training images are labeled, none is left for the unlabeled "
                         "stream; use --unlabeled all, or label fewer")
    return rest
