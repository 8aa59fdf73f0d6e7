"""JPEG decoding and the training transforms on the GPU (``--decode gpu``).

With few CPU cores per GPU, decoding ~2,500 JPEGs a second (what a ResNet-50 CGC step eats on
one H100) starves the GPU. Here the loader workers only read each file's bytes and draw the
random crop parameters (from the same per-sample seed and in the same order as the CPU path,
``semisup.data.datasets.TrainDataset``); the main process decodes the batch with nvJPEG
(``torchvision.io.decode_jpeg(..., device='cuda')``) and crops, resizes and mirrors on the GPU.
The outputs equal the CPU path's up to the decoders' rounding (tested on the CPU with this
same code path, ``device='cpu'``).

Files nvJPEG cannot take (PNG or CMYK inside a .JPEG, progressive oddities, truncated files)
are decoded by PIL in the worker instead, so a bad file never stops a run; an unreadable one
is replaced by the next readable file, as on the CPU path, and counted.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from PIL import Image

from semisup.data import transforms as T
from semisup.data.datasets import DECODE_ERRORS, MAX_ASPECT, TrainDataset, load_good

log = logging.getLogger(__name__)


def read_header(path: str) -> tuple[int, int, bool]:
    """(H, W, nvJPEG can decode it): a baseline/progressive RGB or grayscale JPEG."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            return img.size[1], img.size[0], img.format == "JPEG" and img.mode in ("RGB", "L")


class EncodedTrainDataset(TrainDataset):
    """The bytes of each file and its random parameters, indexed by ``(index, seed)`` like
    :class:`semisup.data.datasets.TrainDataset`, built with the same arguments (same keys after
    :func:`decode_and_transform`; ``draft`` has no effect: nvJPEG decodes the full image).

    Each item: dict(data uint8 [n] (the file, or for files decoded here the RGB pixels),
    hw [2], encoded bool, label, bad, and with crop: crop [5] (top, left, h, w, flip) in
    pixels of the original; with pair: box [4], flip, pair [5] pixel parameters on the view).
    """

    def _read(self, i: int) -> tuple[torch.Tensor, int, int, bool]:
        """(data, H, W, encoded): the file's bytes, or PIL's pixels where nvJPEG cannot decode it."""
        path = self.source.name(i)
        h, w, jpeg = read_header(path)
        if max(h, w) > MAX_ASPECT * min(h, w):
            raise ValueError(f"{w} x {h} pixels: an aspect ratio beyond {MAX_ASPECT}:1")
        if jpeg:
            with open(path, "rb") as f:
                return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8), h, w, True
        return self.source.load(i).flatten(), h, w, False  # PIL: any format, any mode

    def __getitem__(self, key: tuple[int, int]) -> dict:
        position, seed = key
        generator = torch.Generator().manual_seed(seed)
        (data, h, w, encoded), index, bad = load_good(self.source, self.indices, position, read=self._read)
        item = dict(data=data, hw=torch.tensor([h, w]), encoded=encoded, label=int(self.source.labels[index]), bad=bad)
        if self.crop:
            item["crop"] = torch.tensor(T.draw_crop_flip(h, w, self.scale, generator), dtype=torch.long)
        if self.pair:
            params, flag = T.draw_pair(self.size, self.scale, generator, self.flip_protocol)
            item["pair"] = torch.tensor(params, dtype=torch.long)
            item["box"], item["flip"] = T.pair_box(params, self.size, flag)
        return item


def collate_encoded(items: list[dict]) -> dict:
    """Stack the fixed-size fields; keep the variable-length file bytes as a list."""
    out = {"data": [item["data"] for item in items]}
    for key in items[0]:
        if key != "data":
            out[key] = torch.stack([torch.as_tensor(item[key]) for item in items])
    return out


def decode_and_transform(batch: dict, device: torch.device, size: int, resize: int) -> dict:
    """Decode a batch of :class:`EncodedTrainDataset` items on ``device`` and apply the crops.

    Returns the keys the training step reads: image [B, 3, S, S] uint8 (crop), view and aug
    [B, 3, S, S] uint8, box [B, 4], flip [B] (pair), label, bad; all on ``device``.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [i for i, flag in enumerate(batch["encoded"].tolist()) if flag]
    images: list[torch.Tensor | None] = [None] * len(batch["data"])
    sizes = batch["hw"].tolist()
    unreadable = []
    if encoded:
        decoded = _decode_jpegs([batch["data"][i] for i in encoded], device, decode_jpeg, ImageReadMode.RGB)
        for i, image in zip(encoded, decoded):
            # The header's size or nothing: a decoder that returns another shape read the file wrongly.
            if image is None or list(image.shape) != [3, *sizes[i]]:
                unreadable.append(i)
            images[i] = image
    for i, (h, w) in enumerate(sizes):
        if images[i] is None and i not in unreadable:  # decoded by PIL in the worker
            images[i] = batch["data"][i].view(3, h, w).to(device, non_blocking=True)
    if unreadable:
        batch, images = replace_unreadable(batch, images, unreadable)
    out = dict(label=batch["label"].to(device, non_blocking=True), bad=batch["bad"])
    if "crop" in batch:
        params = batch["crop"].tolist()
        out["image"] = torch.stack(
            [T.apply_crop_flip(img, tuple(p[:4]) + (bool(p[4]),), size) for img, p in zip(images, params)]
        )
    if "pair" in batch:
        views = [T.center_view(img, resize, size) for img in images]
        params = batch["pair"].tolist()
        out["view"] = torch.stack(views)
        out["aug"] = torch.stack(
            [T.apply_crop_flip(v, tuple(p[:4]) + (bool(p[4]),), size) for v, p in zip(views, params)]
        )
        out["box"], out["flip"] = batch["box"].to(device, non_blocking=True), batch["flip"].to(
            device, non_blocking=True
        )
    return out


def replace_unreadable(batch: dict, images: list, unreadable: list[int]) -> tuple[dict, list]:
    """The CPU path's policy, in the batch: each image no decoder could read (a JPEG cut
    mid-scan passes the header check in the worker) is replaced by the next readable one of the
    batch, with its label and random parameters, and counted in ``bad``. A run never stops on
    one bad file; a batch with no readable image is an error, as a stream with none is."""
    readable = [i for i in range(len(images)) if i not in unreadable]
    if not readable:
        raise RuntimeError("no readable image in this batch: every file failed to decode")
    batch = {key: (value.clone() if isinstance(value, torch.Tensor) else list(value)) for key, value in batch.items()}
    images = list(images)
    for i in unreadable:
        j = next((k for k in readable if k > i), readable[0])
        images[i] = images[j]
        for key, value in batch.items():
            if key not in ("data", "bad", "encoded"):
                value[i] = value[j]
        batch["bad"][i] += 1
    return batch, images


def _decode_jpegs(data: list[torch.Tensor], device: torch.device, decode_jpeg, mode) -> list[torch.Tensor | None]:
    """Batched decode (None for a file no decoder reads); on CUDA on a side stream the caller's
    stream waits for (:func:`_on_side_stream`)."""
    if device.type != "cuda":
        return _decode_each(data, device, decode_jpeg, mode)
    consumer = torch.cuda.current_stream(device)
    side = _side_stream(device)
    # nvJPEG writes into outputs the allocator hands out on the current stream, without waiting
    # for the kernels queued there (pytorch/vision#9606: a block freed by the step, still read by
    # its queued backward, was overwritten). On a side stream, the allocator hands out only
    # blocks freed on that stream: earlier decodes' outputs, which record_stream keeps from it
    # until the step's kernels that read them are done. The step then waits for the decode.
    with torch.cuda.stream(side):
        decoded = _decode_each(data, device, decode_jpeg, mode)
    consumer.wait_stream(side)
    for image in decoded:
        if image is not None:
            image.record_stream(consumer)
    return decoded


_SIDE_STREAMS: dict = {}


def _side_stream(device: torch.device):
    """One decode stream per GPU, made once."""
    key = torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(device=key)
    return _SIDE_STREAMS[key]


def _decode_each(data: list[torch.Tensor], device: torch.device, decode_jpeg, mode) -> list[torch.Tensor | None]:
    """Batched decode; if the batch call fails (one corrupt file), decode one by one and let
    PIL take the ones the decoder refuses; None for a file PIL cannot read either (a JPEG
    truncated mid-scan: the CPU path counts it unreadable too)."""
    try:
        return list(decode_jpeg(data, mode=mode, device=device))
    except RuntimeError:
        out = []
        for raw in data:
            try:
                out.append(decode_jpeg(raw, mode=mode, device=device))
            except RuntimeError as err:
                try:
                    out.append(_pil_decode(raw).to(device))
                    log.warning("the JPEG decoder refused a file (%s); decoded it with PIL", err)
                except DECODE_ERRORS as pil_err:
                    log.warning("skipping an unreadable image (%s; PIL: %s): replaced by the next of its batch",
                                err, pil_err)
                    out.append(None)
        return out


def _pil_decode(raw: torch.Tensor) -> torch.Tensor:
    import io
    with Image.open(io.BytesIO(raw.numpy().tobytes())) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_rate(paths: list[str], device: torch.device, batch: int = 64, repeats: int = 3) -> float:
    """Images per second decoding ``paths`` with torchvision's decoder on ``device``."""
    import time

    from torchvision.io import ImageReadMode, decode_jpeg
    data = [torch.frombuffer(bytearray(open(p, "rb").read()), dtype=torch.uint8) for p in paths]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    decode_jpeg(data[:batch], mode=ImageReadMode.RGB, device=device)
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(data), batch):
            decode_jpeg(data[i:i + batch], mode=ImageReadMode.RGB, device=device)
        sync()
        best = min(best, time.perf_counter() - start)
    return len(data) / best
