"""The released run's DataParallel replicas, computed on any number of processes.

The published 1 % run trained with ``nn.DataParallel`` on 2 GPUs at batch 128: every input of a
step was cut by ``torch.chunk`` into one piece per replica (64 + 64; the partial last batch of 11
into 6 + 5), each replica ran its forwards on its piece alone, so BatchNorm normalised over 64
images per forward, DataParallel kept the running-statistics update of the first replica only,
and each replica's losses were means over its piece, averaged over the replicas
(``loss.mean()``). Here a process holding several replicas' images reproduces that exactly:
:class:`ReplicaBatchNorm2d` normalises each piece on its own and updates the running statistics
from the first, and :func:`replica_mean` weighs per-sample losses as the replicas did. Where a
replica spans processes, SyncBatchNorm over those processes does the same (``distributed``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def replica_sizes(n: int, replicas: int) -> list[int]:
    """Sizes of ``torch.chunk(batch_of_n, replicas)``: how DataParallel scattered ``n`` images
    over ``replicas`` replicas (ceil(n / replicas) each, the last the rest; fewer pieces when n
    is small)."""
    if n == 0:
        return []
    size = math.ceil(n / max(1, replicas))
    count = math.ceil(n / size)
    return [size] * (count - 1) + [n - size * (count - 1)]


def replica_mean(values: torch.Tensor, replicas: int) -> torch.Tensor:
    """[n] per-sample values -> the mean over replicas of each replica's mean (equal to the plain
    mean when the pieces are equal; the partial last batch weighs its pieces equally)."""
    sizes = replica_sizes(values.shape[0], replicas)
    if len(sizes) <= 1 or len(set(sizes)) == 1:
        return values.mean()
    return torch.stack([piece.mean() for piece in values.split(sizes)]).mean()


class ReplicaBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over each replica's piece of the batch (``replicas`` pieces, as ``torch.chunk``
    cuts them), running statistics updated from the first piece only, as DataParallel kept the
    first replica's. In eval mode, or with one replica, it is plain BatchNorm2d; its parameters
    and buffers are BatchNorm2d's, so checkpoints load either way."""

    replicas: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.replicas <= 1 or x.shape[0] <= 1:
            return super().forward(x)
        pieces = x.split(replica_sizes(x.shape[0], self.replicas))
        if len(pieces) == 1:
            return super().forward(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        first = F.batch_norm(
            pieces[0], self.running_mean, self.running_var, self.weight, self.bias, True, momentum, self.eps
        )
        rest = [F.batch_norm(p, None, None, self.weight, self.bias, True, 0.0, self.eps) for p in pieces[1:]]
        return torch.cat([first, *rest])


def use_replica_batchnorm(model: nn.Module, replicas: int) -> nn.Module:
    """Make every BatchNorm2d of ``model`` a :class:`ReplicaBatchNorm2d` over ``replicas`` pieces
    (in place: same parameters and buffers). Returns the model."""
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = ReplicaBatchNorm2d
        if isinstance(module, ReplicaBatchNorm2d):
            module.replicas = replicas
    return model


@dataclass(frozen=True)
class Geometry:
    """How the released run's replicas map onto this run's processes."""
    replicas: int   # replicas of the released run for this global batch: ceil(batch / --group-size)
    local: int      # replicas inside one process (their pieces normalised and averaged apart)
    processes: int  # processes making up one replica (> 1: SyncBatchNorm over them, negatives gathered)


def geometry(global_batch: int, group_size: int, world: int) -> Geometry:
    """The replicas of a global batch of ``global_batch`` images in groups of ``group_size``
    (the released 2-GPU run: 128 / 64 = 2) on ``world`` processes: several per process, or
    several processes per replica; where neither divides, every process is one replica's part
    of one group over all processes (the closest cheap choice)."""
    replicas = max(1, math.ceil(global_batch / group_size))
    if replicas % world == 0:
        return Geometry(replicas, replicas // world, 1)
    if world % replicas == 0:
        return Geometry(replicas, 1, world // replicas)
    return Geometry(replicas, 1, world)
