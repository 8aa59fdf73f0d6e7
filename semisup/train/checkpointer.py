"""The run's checkpoints: ``checkpoint.pt`` (weights, optimiser, scaler, the TrainState, RNG and
settings; the previous generation kept as ``checkpoint.prev.pt``) and ``model_best.pt``, written
atomically by the main process, and the resume from ``checkpoint.pt``."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn

from semisup import checkpoint as ckpt
from semisup import distributed as D
from semisup.errors import UserError
from semisup.runfiles import RunFiles
from semisup.train.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLoss(UserError, RuntimeError):
    """A loss or an update that is not finite: the run stops, its last good checkpoint named."""


class DataChanged(UserError, RuntimeError):
    """The data a run resumes on is not the data its checkpoint trained on."""


class UnreadableCheckpoint(UserError, RuntimeError):
    """checkpoint.pt cannot resume the run: the message names the earlier generation and the ``mv``."""


class Checkpointer:
    """Saves and restores what a run needs to continue bit for bit: the model, optimiser and
    scaler it is given, the TrainState, the RNG and the settings (``config``, a dict)."""

    def __init__(self, run_dir: Path, dist: D.Dist, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, state: TrainState, config: dict, steps_per_epoch: int,
                 data: dict | None = None):
        self.files, self.dist = RunFiles(run_dir), dist
        self.model, self.optimizer, self.scaler, self.state = model, optimizer, scaler, state
        self.config, self.steps_per_epoch, self.data = config, steps_per_epoch, data

    def state_dict(self) -> dict:
        """What checkpoint.pt holds: weights, optimiser, the TrainState's entries, RNG and config."""
        return dict(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
            **self.state.state_dict(), epoch=self.state.step // self.steps_per_epoch, rng=ckpt.rng_state(),
            config=self.config, data=self.data,
        )

    def stop_non_finite(self, what: str, step: int) -> None:
        """Raise :class:`NonFiniteLoss` for ``what`` at ``step``, naming the last good checkpoint."""
        path = self.files.checkpoint
        kept = (f"the last good checkpoint is {path} (step {ckpt.load(path)['step']})" if path.exists()
                else "no checkpoint was written before it")
        raise NonFiniteLoss(
            f"non-finite {what} at step {step}; {kept} (try a lower --lr-head/--lr-trunk or --amp bf16)"
        )

    def save(self) -> None:
        """checkpoint.pt, the previous one kept; every process waits for it."""
        # An update can overflow the weights while the loss that produced it was finite: such a
        # state is never written over the last good checkpoint.
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]  # weights, BN statistics
        if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            self.stop_non_finite("weights", self.state.step)
        if self.dist.is_main:
            ckpt.save_atomic(self.state_dict(), self.files.checkpoint, keep_previous=True)
        D.barrier()

    def save_best(self) -> None:
        """model_best.pt: the weights, the settings and the best epoch's metrics."""
        if self.dist.is_main:
            best = dict(model=self.model.state_dict(), config=self.config, **self.state.best)
            ckpt.save_atomic(best, self.files.best)
        D.barrier()

    def unusable(self, what: str) -> UnreadableCheckpoint:
        path = self.files.checkpoint
        prev = ckpt.previous(path)
        earlier = (f"the previous checkpoint {prev} is kept: `mv {prev} {path}` resumes from it"
                   if prev.exists() else "no earlier checkpoint exists")
        return UnreadableCheckpoint(f"{path} {what}; {earlier}; or `mv {path} {path}.damaged` to start the run anew")

    def resume(self, labeled_per_step: int) -> bool:
        """Restore checkpoint.pt where there is one (False where there is none)."""
        path = self.files.checkpoint
        if not path.exists():
            return False
        try:
            state = ckpt.load(path)
        except Exception as err:  # torch raises several types for a truncated or damaged file
            raise self.unusable(f"cannot be read, truncated or damaged ({type(err).__name__})") from err
        missing = [k for k in ("model", "optimizer", "scaler", "rng", *TrainState.REQUIRED)
                   if not isinstance(state, dict) or k not in state]
        if missing:
            raise self.unusable(
                f"is not a checkpoint to resume from (no {', '.join(missing)}: a model_best.pt copied over it?)")
        self.check_data(state.get("data"), state["step"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.state.load_state_dict(state, labeled_per_step=labeled_per_step)
        self._count_processes(state["step"])
        ckpt.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d (epoch %d)", path, self.state.step, state["epoch"])
        return True

    def check_data(self, saved: dict | None, step: int) -> None:
        """The data as it is now against the data the checkpoint trained on (checkpoints written
        before the record: not compared). Another labeled subset (the split file or the training
        folders changed) is refused: the run would go on with other labels than it began with.
        Other files changed (unlabeled or validation images added or removed) are said, and the
        run resumes on the data as it is."""
        if not isinstance(saved, dict) or self.data is None or "labeled_sha256" not in saved:
            return
        if saved.get("labeled_sha256") != self.data["labeled_sha256"]:
            raise DataChanged(
                f"{self.files.checkpoint}: the labeled subset changed since step {step} ({saved.get('labeled')} "
                f"labeled images then, {self.data['labeled']} now: the split file or the training folders changed); "
                "resuming would train on other labels: restore the data, or start the run anew (--overwrite)")
        if saved.get("dataset") != self.data["dataset"]:
            log.warning("the dataset's files changed since step %d (digest %s then, %s now) while the labeled subset "
                        "is the same: resuming on the files as they are now", step, saved.get("dataset"),
                        self.data["dataset"])

    def _count_processes(self, step: int) -> None:
        """The process counts the run trained on, this one appended where it changed."""
        earlier = self.state.process_counts
        if earlier and earlier[-1] != self.dist.world:
            log.warning(
                "resuming on %d process(es); the run trained on %d until step %d: batches per process and the "
                "negatives' and BatchNorm's groups follow the new count (recorded in final.json)",
                self.dist.world, earlier[-1], step,
            )
            self.state.process_counts = earlier + [self.dist.world]
        elif not earlier:
            self.state.process_counts = [self.dist.world]
