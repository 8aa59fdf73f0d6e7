"""The training loop's numbers: the step lines' window, the epoch's sums, the first non-finite
step and the counts of images, kept on the device between log points (a value read on the host
is a device sync, so it is read only when a line is written).

What the numbers become (console, train.log, TensorBoard, metrics.csv, progress.json) is
:class:`semisup.train.runlog.RunLog`'s; this part only adds them up.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from semisup import distributed as D
from semisup.train.runlog import RunLog
from semisup.train.state import TrainState
from semisup.train.step import StepLosses
from semisup.train.timing import PartTimes


class Reporter:
    """Adds up each step's losses [3] (ce, consistency, loss) into the window of the next step line
    and into ``state.epoch_sums`` [4] (the same three and the step count), saved with the run."""

    def __init__(self, runlog: RunLog, state: TrainState, times: PartTimes, device: torch.device, schedule,
                 images_per_step: int, show_bar: bool):
        self.runlog, self.state, self.times, self.device = runlog, state, times, device
        self.total_steps, self.steps_per_epoch = schedule.total_steps, schedule.steps_per_epoch
        self.images_per_step = images_per_step  # all processes' images of one step, for images/s
        self.show_bar = show_bar
        self.window = torch.zeros(3, device=device)
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)  # -1: none yet
        self.bar = None
        self.restart_clock()

    @contextmanager
    def progress_bar(self):
        """The bar only where a person watches a terminal (Slurm logs get the step lines); log lines
        go through it, never glued onto it."""
        self.bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                        disable=not self.show_bar)
        try:
            with logging_redirect_tqdm():
                yield self.bar
        finally:
            self.bar.close()

    def restart_clock(self) -> None:
        """A new window: evaluation and checkpoint time is not training speed."""
        self.window_steps, self.window_start, self.data_wait = 0, time.perf_counter(), 0.0

    def next_batches(self, streams: list) -> tuple[dict, dict | None]:
        """The next labeled batch and, where used, the next unlabeled one; the wait is data time."""
        waited = time.perf_counter()
        labeled = next(streams[0])
        unlabeled = next(streams[1]) if len(streams) > 1 else None
        seconds = time.perf_counter() - waited
        self.data_wait += seconds
        self.times.add("data_wait", seconds)
        return labeled, unlabeled

    def add(self, losses: StepLosses, labeled: dict, unlabeled: dict | None, world: int) -> None:
        """Count the step just taken (``state.step`` already advanced) without a device sync."""
        stacked = torch.stack([losses.ce, losses.consistency, losses.loss.detach().float()])
        self.window += stacked
        self.state.epoch_sums = self.state.epoch_sums.to(self.device) + torch.cat(
            [stacked.double(), stacked.new_ones(1).double()])
        finite = torch.isfinite(losses.loss.detach()) | (self.first_nonfinite >= 0)
        self.first_nonfinite = torch.where(finite, self.first_nonfinite,
                                           torch.full_like(self.first_nonfinite, self.state.step - 1))
        # Bad-file counts come from the loader on the CPU: no device sync.
        self.state.bad_images += int(labeled["bad"].sum()) + (int(unlabeled["bad"].sum()) if unlabeled else 0)
        self.state.labeled_seen += len(labeled["label"]) * world
        self.window_steps += 1
        if self.bar is not None:
            self.bar.update(1)

    def nonfinite_step(self) -> int | None:
        """The first step whose loss was not finite on any process, or None: every process gets
        the same answer (one process stopping alone would leave the others waiting in the next
        gradient all-reduce for ever). A device sync and a collective: called at log points only."""
        never = torch.iinfo(torch.long).max
        first = self.first_nonfinite.clone()
        step = int(D.all_reduce_min(first.masked_fill_(first < 0, never)))
        return step if step != never else None

    def write_line(self, lr_trunk: float, lr_head: float) -> None:
        """The window's means and speeds: the step line, TensorBoard and progress.json."""
        mean = (self.window / max(self.window_steps, 1)).tolist()
        if self.bar is not None:
            self.bar.set_postfix(ce=f"{mean[0]:.3f}", cons=f"{mean[1]:.3f}", lr=f"{lr_trunk:.3g}")
        steps, seconds = max(self.window_steps, 1), time.perf_counter() - self.window_start
        memory = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else float("nan")
        numbers = dict(ce=mean[0], consistency=mean[1], loss=mean[2], lr_trunk=lr_trunk, lr_head=lr_head,
                       images_per_s=steps * self.images_per_step / max(seconds, 1e-9),
                       data_s_per_step=self.data_wait / steps, compute_s_per_step=(seconds - self.data_wait) / steps,
                       peak_gpu_gib=memory, eta_s=(self.total_steps - self.state.step) * (seconds / steps))
        self.runlog.step(math.ceil(self.state.step / self.steps_per_epoch), self.state.step, self.total_steps,
                         numbers)
        self.window.zero_()
        self.restart_clock()

    def epoch_means(self, world: int) -> dict:
        """The epoch's mean losses over every process's steps; the sums start again."""
        sums = D.all_reduce_sum(self.state.epoch_sums.to(self.device).clone()).cpu() / world
        self.state.epoch_sums = torch.zeros(4, dtype=torch.float64)
        steps = sums[3].item()
        return dict(train_ce=sums[0].item() / steps, train_consistency=sums[1].item() / steps,
                    train_loss=sums[2].item() / steps)


def shows_bar(is_main: bool) -> bool:
    """A progress bar on the main process of a terminal session only."""
    return is_main and sys.stderr.isatty()
