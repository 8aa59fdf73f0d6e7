"""The consistency term of the loss, one object built once from the config.

``--consistency cgc`` is the method: InfoNCE between the augmented view's heatmap and the same
crop + flip of the view's heatmap, the other images of the anchor's group as negatives.
``--consistency l2`` is the earlier "GCC" baseline: the L2 distance of the pair, no negatives.
Both are called the same way by the step::

    term(cam_aug [B, h, w], cam [B, h, w], boxes [B, 4], flips [B]) -> [] float32

and know the released run's replicas (``models.replicas``): the groups the negatives come
from and the weighting of a partial last batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from semisup import distributed as D
from semisup.config import Config, ConfigError
from semisup.method import cgc
from semisup.models import replicas as R


@dataclass(frozen=True)
class ConsistencyTerm:
    """What both terms share: the heatmaps' resized side and the released replicas."""
    cam_size: int  # --cam-size: the side the heatmaps are compared at
    geometry: R.Geometry  # the released run's replicas on this run's processes

    def __call__(self, cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor,
                 flips: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def negatives_per_anchor(self, local_batch: int, fewest: bool = False) -> int | None:
        """InfoNCE negatives of an anchor in a full batch of ``local_batch`` per process (``fewest``:
        in the smallest replica, else the first); None for a term without negatives."""
        return None


@dataclass(frozen=True)
class ContrastiveConsistency(ConsistencyTerm):
    """CGC: InfoNCE over the anchor's replica (``cgc.cgc_loss``)."""
    temperature: float
    negatives: str  # --cgc-negatives: 'aug' (released) or 'cross'

    def __call__(self, cam_aug, cam, boxes, flips):
        if self.geometry.processes > 1:
            # A replica spans processes: its negatives come from the others, with gradient.
            all_aug, offset = D.gather_with_grad(cam_aug)
            return cgc.cgc_loss(cam_aug, cam, boxes, flips, self.temperature, self.cam_size,
                                cam.shape[0] * self.geometry.processes, self.negatives, all_aug, offset)
        return cgc.cgc_loss(cam_aug, cam, boxes, flips, self.temperature, self.cam_size, negatives=self.negatives,
                            replicas=self.geometry.local)

    def negatives_per_anchor(self, local_batch: int, fewest: bool = False) -> int:
        if self.geometry.processes > 1:
            return local_batch * self.geometry.processes - 1
        sizes = R.replica_sizes(local_batch, self.geometry.local)
        return (min(sizes) if fewest else sizes[0]) - 1


@dataclass(frozen=True)
class L2Consistency(ConsistencyTerm):
    """GCC: the mean of per-sample L2 terms, weighted as the released replicas took it."""
    loss_replicas: int  # replicas whose means are averaged (1: the plain mean)

    def __call__(self, cam_aug, cam, boxes, flips):
        return R.replica_mean(cgc.gcc_l2_per_sample(cam_aug, cam, boxes, flips, self.cam_size), self.loss_replicas)


def build_consistency(cfg: Config, geometry: R.Geometry, loss_replicas: int) -> ConsistencyTerm:
    """The run's term from ``--consistency`` and its settings."""
    if cfg.consistency == "l2":
        return L2Consistency(cfg.cam_size, geometry, loss_replicas)
    return ContrastiveConsistency(cfg.cam_size, geometry, cfg.temperature, cfg.cgc_negatives)


def check_negatives(cfg: Config, term: ConsistencyTerm, per_process: int, key: str, world: int) -> None:
    """Refuse a CGC run whose anchors would have no negative: its InfoNCE would be exactly 0 at every
    step (``--batch-unlabeled 1``, or a replica of one image). ``key``: the batch setting of the pair."""
    negatives = term.negatives_per_anchor(per_process, fewest=True)
    if cfg.cgc_weight == 0 or negatives is None or negatives >= 1:
        return
    raise ConfigError(
        f"--{key.replace('_', '-')} {getattr(cfg, key)} with --group-size {cfg.group_size} on {world} process(es) "
        "leaves an anchor of the consistency loss without a negative (InfoNCE would be 0 at every step); give at "
        "least 2 images to every replica"
    )
