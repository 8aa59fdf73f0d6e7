"""What a run writes while it trains, for a person watching it: step lines, TensorBoard,
metrics.csv, progress.json.

Every ``--log-every`` steps one line goes to the console and train.log (epoch/step, lr, each
loss, images/s, data-loading vs compute time, peak GPU memory, ETA: a Slurm log is readable
without TensorBoard) and the same numbers to TensorBoard (tags under ``train/``, ``lr/``, ``data/``,
``system/``; evaluations under ``val/``); ``progress.json``
holds the latest of them for ``jobs/status.py``. Each epoch's row goes to metrics.csv and
TensorBoard; each evaluation's gallery to TensorBoard's images; the run's settings with its final
metrics to TensorBoard's hyper-parameter table. Only the main process writes files.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

import pandas as pd

from semisup.files import RunFileError, read_csv, write_atomic, write_text_atomic
from semisup.registry import METRICS
from semisup.runfiles import RunFiles

log = logging.getLogger("semisup.train.trainer")

# Settings shown in TensorBoard's hyper-parameter table beside the final metrics.
HPARAMS = (
    "method", "labeled_fraction", "seed", "arch", "pretrained", "cgc_weight", "temperature", "consistency",
    "group_size", "lr_trunk", "lr_head", "epochs", "batch_labeled", "batch_unlabeled", "crop_scale_min", "cam_class",
)

# TensorBoard tag of each number, in namespaces a reader can fold: train/ (losses), lr/, data/
# (loading and bad files), system/ (speed, memory, time), val/ (evaluation). Epoch means of the
# losses are train/epoch_*, a different value from the step windows' train/*.
_STEP_TAGS = dict(
    ce="train/ce", consistency="train/consistency", loss="train/loss", lr_trunk="lr/trunk", lr_head="lr/head",
    images_per_s="system/images_per_s", data_s_per_step="data/wait_s_per_step",
    compute_s_per_step="system/compute_s_per_step", peak_gpu_gib="system/peak_gpu_gib", eta_s="system/eta_s",
)
_EPOCH_TAGS = dict(
    train_ce="train/epoch_ce", train_consistency="train/epoch_consistency", train_loss="train/epoch_loss",
    bad_images="data/bad_images", labeled_images="data/labeled_images", unlabeled_images="data/unlabeled_images",
    eval_seconds="system/eval_seconds",
)
_NOT_LOGGED_AT_EPOCHS = ("epoch", "step", "lr_trunk", "lr_head")  # the step lines log the learning rates already


def epoch_tag(key: str) -> str:
    """A metrics.csv column's TensorBoard tag: the training numbers' above, a metric's its own
    declaration (semisup.registry.METRICS), anything else of the evaluation under val/."""
    return _EPOCH_TAGS.get(key) or METRICS.tag(key) or f"val/{key}"


def _quiet_tensorboard_thread(args) -> None:
    """TensorBoard's writer thread dies of a full disk with a traceback on stderr; RunLog says it
    in one line instead (the same error reaches its next call)."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _previous_excepthook(args)


_previous_excepthook = threading.excepthook


class RunLog:
    def __init__(self, run_dir: Path | None, is_main: bool):
        self.run_dir = run_dir
        self.writes = is_main and run_dir is not None
        self._writer = None
        self._tensorboard_failed = False
        self.purge_after: int | None = None  # set on resume: events logged after the checkpoint's step are dropped

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            threading.excepthook = _quiet_tensorboard_thread
            # A resumed run repeats the steps after its checkpoint: TensorBoard drops what the
            # stopped run logged from purge_step on, so each step is shown once.
            purge = None if self.purge_after is None else self.purge_after + 1
            self._writer = SummaryWriter(RunFiles(self.run_dir).tensorboard, purge_step=purge)
        return self._writer

    def tensorboard(self, write) -> None:
        """``write(writer)``, best effort: TensorBoard is a view of numbers metrics.csv, progress.json
        and train.log keep; where its event file cannot be written (a full disk) the run goes on
        without it, saying so once."""
        if self._tensorboard_failed:
            return
        try:
            write(self.writer)
        except OSError as err:
            self._tensorboard_failed = True
            log.warning("TensorBoard's event file could not be written (%s): the run goes on without it; "
                        "metrics.csv, progress.json and train.log have the numbers", err.strerror or err)

    def step(self, epoch: int, step: int, total_steps: int, numbers: dict) -> None:
        """numbers: ce, consistency, loss, lr_trunk, lr_head, images_per_s, data_s_per_step,
        compute_s_per_step, peak_gpu_gib (nan off GPU), eta_s."""
        eta = numbers["eta_s"]
        memory = numbers["peak_gpu_gib"]
        log.info(
            "epoch %d step %d/%d  lr %.3g  ce %.4f  cgc %.4f  loss %.4f  %.1f images/s  data %.3fs compute %.3fs per"
            " step  peak GPU %s  ETA %s",
            epoch,
            step,
            total_steps,
            numbers["lr_trunk"],
            numbers["ce"],
            numbers["consistency"],
            numbers["loss"],
            numbers["images_per_s"],
            numbers["data_s_per_step"],
            numbers["compute_s_per_step"],
            f"{memory:.1f} GiB" if math.isfinite(memory) else "-",
            time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 else f"{eta / 3600:.1f} h",
        )
        if not self.writes:
            return
        def scalars(writer):
            for key, value in numbers.items():
                if math.isfinite(value):
                    writer.add_scalar(_STEP_TAGS[key], value, step)
            writer.flush()  # what a person watching sees is current (and a resumed run purges it)
        self.tensorboard(scalars)
        progress = dict(epoch=epoch, step=step, total_steps=total_steps, updated=time.strftime("%Y-%m-%d %H:%M:%S"),
                        **{k: (round(v, 4) if math.isfinite(v) else None) for k, v in numbers.items()})
        write_text_atomic(RunFiles(self.run_dir).progress, json.dumps(progress))

    def epoch(self, row: dict) -> None:
        """Append (or, after a resume, replace) the epoch's row of metrics.csv; scalars to TensorBoard."""
        if not self.writes:
            return
        path = RunFiles(self.run_dir).metrics
        frame = self._earlier_epochs(path, row["epoch"])
        write_atomic(path, lambda p: pd.concat([frame, pd.DataFrame([row])], ignore_index=True).to_csv(p, index=False))
        def scalars(writer):
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in _NOT_LOGGED_AT_EPOCHS:
                    writer.add_scalar(epoch_tag(key), value, row["step"])
            writer.flush()
        self.tensorboard(scalars)

    @staticmethod
    def _earlier_epochs(path: Path, epoch: int) -> pd.DataFrame:
        """metrics.csv's rows before ``epoch`` (a resumed run rewrites its epoch once). A file cut to
        nothing is an empty table; one that is not the run's table (damaged, edited) is moved aside
        to ``metrics.csv.damaged-<time>`` with a warning, and the run's table starts again: a log
        never stops the training it records."""
        try:
            frame = read_csv(path) if path.exists() else pd.DataFrame()
            if len(frame) and "epoch" not in frame:
                raise RunFileError(f"{path}: no 'epoch' column")
        except RunFileError as err:
            aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            log.warning("%s; moved to %s, and the epochs' table starts again from this epoch", err, aside.name)
            return pd.DataFrame()
        return frame[frame["epoch"] < epoch] if len(frame) else frame

    def image(self, tag: str, image, step: int) -> None:
        """A uint8 [H, W, 3] array (the evaluation's gallery grid) into TensorBoard's images."""
        if self.writes:
            self.tensorboard(lambda writer: (writer.add_image(tag, image, step, dataformats="HWC"), writer.flush()))

    def hparams(self, settings: dict, result: dict) -> None:
        """The run's settings with its final (and best) metrics, in TensorBoard's HPARAMS tab."""
        if not self.writes:
            return
        hparams = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in settings.items() if k in HPARAMS
        }
        hparams["method"] = result.get("method", "")
        keys = METRICS.hparams()  # the metrics that declare themselves hparams (top1, top5, ch, knn_top1, ...)
        metrics = {f"hparam/{which}_{k}": v for which in ("final", "best") for k, v in (result.get(which) or {}).items()
                   if k in keys and isinstance(v, (int, float)) and math.isfinite(v)}
        self.tensorboard(lambda writer: (writer.add_hparams(hparams, metrics, run_name="."), writer.flush()))

    def close(self) -> None:
        if self._writer is not None and not self._tensorboard_failed:
            self.tensorboard(lambda writer: writer.close())
