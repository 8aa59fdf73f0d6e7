"""The training streams: endless iterators of ready batches, labeled and (where used) unlabeled,
each a dataset of ``(index, seed)`` samples behind a sampler that resumes at any step.

They read only :class:`StreamSettings`, the few settings that shape a training sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from semisup.config import SettingsView
from semisup.data.bundle import DataBundle
from semisup.data.datasets import EpochSampler, StreamSampler, TrainDataset, make_loader
from semisup.data.loaderlimits import guarded

LABELED_STREAM, UNLABELED_STREAM = 0, 1  # seeds the two streams' samplers apart


@dataclass(frozen=True)
class StreamSettings(SettingsView):
    """What a training sample depends on (the settings of the same names, ``semisup.config``)."""
    image_size: int  # the crop's side
    resize_size: int  # the view's shorter side before its centre crop
    crop_scale_min: float  # the random resized crop's smallest area fraction
    flip_protocol: str
    decode: str  # 'cpu', 'cpu-draft' or 'gpu'
    workers: int  # loader processes per stream
    seed: int


def training_streams(s: StreamSettings, bundle: DataBundle, batches: tuple[int, int], pair_on_labeled: bool,
                     device: torch.device, rank: int, world: int, start_step: int) -> list[Iterator[dict]]:
    """[labeled, unlabeled (where the bundle has unlabeled images)] iterators of batches for this
    process, starting at ``start_step``; ``batches``: (labeled, unlabeled) images per process.
    With ``decode == 'gpu'`` the loaders carry the files' bytes and the batches are decoded on ``device``."""
    pin = device.type == "cuda"
    if s.decode == "gpu":
        from semisup.data.gpu_decode import EncodedTrainDataset, collate_encoded, decode_and_transform
        dataset_type, collate = EncodedTrainDataset, collate_encoded
        finish = lambda batch: decode_and_transform(batch, device, s.image_size, s.resize_size)
    else:
        dataset_type, collate, finish = TrainDataset, None, (lambda batch: batch)
    options = dict(flip_protocol=s.flip_protocol, draft=s.decode == "cpu-draft")
    labeled = dataset_type(bundle.labeled, bundle.labeled_indices, s.image_size, s.resize_size, s.crop_scale_min,
                           crop=True, pair=pair_on_labeled, **options)
    sampler = EpochSampler(len(labeled), batches[0], s.seed, LABELED_STREAM, rank, world, start_batch=start_step)
    loading = iter(make_loader(labeled, sampler, s.workers, pin, collate))
    streams = [guarded(map(finish, loading), "labeled", loading)]
    if bundle.unlabeled is not None:
        unlabeled = dataset_type(bundle.unlabeled, bundle.unlabeled_indices, s.image_size, s.resize_size,
                                 s.crop_scale_min, crop=False, pair=True, **options)
        sampler = StreamSampler(len(unlabeled), batches[1], s.seed, UNLABELED_STREAM, rank, world,
                                start_batch=start_step)
        loading = iter(make_loader(unlabeled, sampler, s.workers, pin, collate))
        streams.append(guarded(map(finish, loading), "unlabeled", loading))
    return streams
