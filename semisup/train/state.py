"""Where a run stands between steps: saved in every checkpoint, restored on resume."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _zero_sums() -> torch.Tensor:
    return torch.zeros(4, dtype=torch.float64)


@dataclass
class TrainState:
    """The counters of a run (plain types and tensors: a checkpoint loads with ``weights_only``)."""
    step: int = 0  # optimizer steps taken
    epoch_sums: torch.Tensor = field(default_factory=_zero_sums)  # [4] float64: ce, consistency, loss, steps this epoch
    bad_images: int = 0  # unreadable images replaced so far (both streams)
    labeled_seen: int = 0  # labeled images, all processes (the last batch of an epoch is partial)
    best: dict | None = None  # {epoch, step, top1, top5} of the best validation top-1 so far
    last_row: dict = field(default_factory=dict)  # the last epoch's metrics row
    process_counts: list[int] = field(default_factory=list)  # one entry per start on another number of processes

    REQUIRED = ("step", "epoch_sums", "bad_images", "best")  # in every checkpoint this project wrote

    def state_dict(self) -> dict:
        return dict(
            step=self.step, epoch_sums=self.epoch_sums.cpu().clone(), bad_images=self.bad_images,
            labeled_seen=self.labeled_seen, best=self.best, last_row=self.last_row,
            process_counts=list(self.process_counts),
        )

    def load_state_dict(self, state: dict, labeled_per_step: int) -> None:
        """From a checkpoint's entries; ``labeled_per_step`` counts the labeled images of a
        checkpoint written before they were counted."""
        self.step, self.epoch_sums, self.bad_images, self.best = (
            state["step"], state["epoch_sums"], state["bad_images"], state["best"],
        )
        self.last_row = state.get("last_row") or {}
        self.labeled_seen = state.get("labeled_seen", self.step * labeled_per_step)
        self.process_counts = [int(n) for n in state.get("process_counts") or []]
