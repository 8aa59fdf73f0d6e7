"""The training entry point shared by ``semisup/run.py`` and the cluster jobs.

One step, as in the method: cross-entropy on the labeled batch; Grad-CAM of the unlabeled
view for its predicted class and of the augmented view for the same class; the consistency
loss between them; ``loss = ce + lambda * consistency``. With ``--labeled-fraction 1.0`` the
consistency loss is applied to the labeled images with their true class instead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from semisup import checkpoint as ckpt
from semisup import cpus
from semisup import distributed as D
from semisup.config import Config, check_device, compiles, save_config
from semisup.data.boxes import coverage_note
from semisup.data.datasets import DataBundle
from semisup.data.formats import build_data
from semisup.data.loaderlimits import batch_bytes, check_loader_limits
from semisup.data.streams import StreamSettings, training_streams
from semisup.distributed import amp_dtype
from semisup.errors import UserError
from semisup.eval.evaluator import Evaluator, format_results
from semisup.eval.metrics import not_meaningful
from semisup.eval.settings import EvalSettings
from semisup.files import write_json_atomic
from semisup.method import explainers
from semisup.models import replicas as R
from semisup.models.base import build_model
from semisup.models.loading import load_pretrained
from semisup.runfiles import RunFiles
from semisup.train.checkpointer import Checkpointer, NonFiniteLoss, UnreadableCheckpoint  # noqa: F401 (re-exported)
from semisup.train.compiling import CompiledForward
from semisup.train.consistency import build_consistency, check_negatives
from semisup.train.logs import log_to_file, setup_logging
from semisup.train.preemption import SignalCheckpoint, Stop, signal_name
from semisup.train.reporter import Reporter, shows_bar
from semisup.train.rundir import RunDirError, acquire_lock, archive_previous, prepare_run_dir  # noqa: F401 (RunDirError: re-exported)
from semisup.train.runlog import RunLog
from semisup.train.state import TrainState
from semisup.train.step import StepLosses, StepSettings, cgc_step, to_device
from semisup.train.summary import (
    describe_start,
    next_commands,
    planner_line,
    print_summary,
    random_start_warning,
    result_rows,
)
from semisup.train.timing import PartTimes
from semisup.version import code_version

log = logging.getLogger(__name__)


class BadDataError(UserError, RuntimeError):
    """More unreadable images than --max-bad-fraction allows."""


@dataclass
class Schedule:
    """Learning-rate schedule in optimizer steps (milestones and warm-up given in epochs): a
    linear rise over the warm-up (step 0 at 1/warm-up steps, never 0), then MultiStepLR."""
    steps_per_epoch: int
    total_steps: int
    milestones: tuple[int, ...]
    gamma: float
    warmup_epochs: float = 0.0

    def factor(self, step: int) -> float:
        decay = self.gamma ** sum(step >= m * self.steps_per_epoch for m in self.milestones)
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        return decay * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else decay


def run_schedule(cfg: Config, labeled_images: int, world: int) -> Schedule:
    """The run's steps: an epoch is one pass over the labeled set, its last batch partial
    (``len(train_loader)`` of the released scripts); ``--max-steps`` cuts the run short."""
    per_process = cfg.batch_labeled // world
    steps_per_epoch = math.ceil(math.ceil(labeled_images / world) / per_process)
    total = steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    return Schedule(steps_per_epoch, total, tuple(cfg.lr_milestones), cfg.lr_gamma, cfg.lr_warmup_epochs)


def build_optimizer(cfg: Config, trunk: list[nn.Parameter], head: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD as the released runs (momentum, weight decay), or AdamW; the trunk's and the head's
    learning rates as two parameter groups, in that order (the schedule scales both)."""
    groups = [dict(params=trunk, lr=cfg.lr_trunk), dict(params=head, lr=cfg.lr_head)]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class Trainer:
    """One run's parts, built from the config: the model placed for the released replicas, the
    optimiser and its schedule, the consistency term, the step's settings, the checkpointer and
    the run log; :meth:`fit` runs :meth:`loop` over them."""

    def __init__(self, cfg: Config, dist: D.Dist, run_dir: Path, bundle: DataBundle):
        self.cfg, self.dist, self.run_dir, self.bundle = cfg, dist, run_dir, bundle
        self.lock = None  # the main process's hold on the run folder (run_training sets it)
        self.threads = None  # the torch threads this process took and why (run_training sets them)
        self.device = dist.device
        self.batch_l, self.batch_u = cfg.batch_labeled // dist.world, cfg.batch_unlabeled // dist.world
        self.uses_unlabeled = bundle.unlabeled is not None
        self.pair_on_labeled = cfg.full_supervision and cfg.forwards_pairs
        # The released run's DataParallel replicas of --group-size images (2 x 64 at batch 128):
        # the InfoNCE groups always; BatchNorm and the losses' weighting with --bn-geometry replicas.
        self.geometry = R.geometry(
            cfg.batch_unlabeled if self.uses_unlabeled else cfg.batch_labeled, cfg.group_size, dist.world
        )
        self.loss_replicas = self.geometry.local if cfg.bn_geometry == "replicas" else 1
        self.consistency = build_consistency(cfg, self.geometry, self.loss_replicas)
        check_negatives(cfg, self.consistency, self.pair_batch()[1], self.pair_batch()[0], dist.world)
        self.model = self.place_model()
        head, trunk = self.model.head_parameters(), self.model.trunk_parameters()
        self.optimizer = build_optimizer(cfg, trunk, head)
        self.base_lrs = [cfg.lr_trunk, cfg.lr_head]
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.schedule = run_schedule(cfg, len(bundle.labeled_indices), dist.world)
        self.state = TrainState(process_counts=[dist.world])
        self.times = PartTimes()
        self.forward = CompiledForward(self.model, lambda: self.model, enabled=False)  # fit() sets the run's
        self.runlog = RunLog(run_dir, dist.is_main)
        self.checkpointer = Checkpointer(run_dir, dist, self.model, self.optimizer, self.scaler, self.state,
                                         cfg.to_dict(), self.schedule.steps_per_epoch, data_identity(bundle))
        self.settings = self.step_settings()
        self.eval_settings = EvalSettings.of(cfg)  # all the evaluation and the gallery read

    def place_model(self) -> nn.Module:
        """The model with its pretrained trunk on the device, its BatchNorm over the released replicas."""
        cfg = self.cfg
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the released scripts set it: fastest kernels for each shape
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.arch, len(self.bundle.classes))
        self.pretrained_report = load_pretrained(model, cfg.pretrained) if cfg.pretrained else None
        model.to(self.device)
        self.channels_last = D.uses_channels_last(cfg, self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.bn_processes = 1
        if cfg.bn_geometry == "replicas" and self.geometry.local > 1:
            R.use_replica_batchnorm(model, self.geometry.local)
        elif cfg.bn_geometry == "replicas" and self.geometry.processes > 1 and self.device.type == "cuda":
            # A replica spans processes: SyncBatchNorm over them (PyTorch has none on CPU).
            self.bn_processes = self.geometry.processes
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=D.process_subgroup(self.bn_processes))
        return model

    # ---- one optimisation step -------------------------------------------------------
    def negatives_per_anchor(self, local_batch: int, fewest: bool = False) -> int | None:
        """InfoNCE negatives of an anchor in a full batch of ``local_batch`` per process (None: no negatives)."""
        return self.consistency.negatives_per_anchor(local_batch, fewest)

    def pair_batch(self) -> tuple[str, int]:
        """The batch setting the consistency pairs come from, and its images per process."""
        if self.pair_on_labeled:
            return "batch_labeled", self.batch_l
        return "batch_unlabeled", self.batch_u

    def replica_weighted(self, per_sample: torch.Tensor) -> torch.Tensor:
        """The mean of per-sample losses [n] as the released replicas took it: each replica's mean,
        averaged (a partial last batch weighs its pieces equally)."""
        return R.replica_mean(per_sample, self.loss_replicas)

    def cgc_weight(self) -> float:
        """Lambda at the current step, ramped linearly over --cgc-warmup-epochs (a Python
        float computed from the step counter: no device sync)."""
        ramp_steps = self.cfg.cgc_warmup_epochs * self.schedule.steps_per_epoch
        return self.cfg.cgc_weight * (min(1.0, self.state.step / ramp_steps) if ramp_steps > 0 else 1.0)

    def autocast(self):
        return D.autocast(self.device, self.amp_dtype)

    def step_settings(self) -> StepSettings:
        cfg, explainer = self.cfg, explainers.get(self.cfg.explainer)
        return StepSettings(
            ce=lambda out, labels: self.replica_weighted(F.cross_entropy(out.float(), labels, reduction="none")),
            consistency=self.consistency,
            explain=lambda images, logits, features, classes: explainer(
                explainers.ExplainRequest(self.model, images, logits, features, classes)),
            uses_heatmaps=cfg.cgc_weight > 0,
            pair_on_labeled=self.pair_on_labeled,
            explain_label=cfg.cam_class == "label",
            autocast=self.autocast,
        )

    def training_step(self, labeled: dict, unlabeled: dict | None, settings: StepSettings | None = None) -> StepLosses:
        """One step on the loaders' batches; the losses stay on the device (no host sync here).
        ``settings`` replace the run's (the benchmark's floor turns the explanation off)."""
        crops, pair = to_device(labeled, self.device, self.channels_last, pair=self.pair_on_labeled)
        if unlabeled is not None:
            _, pair = to_device(unlabeled, self.device, self.channels_last, pair=True)
        cgc_weight, settings = self.cgc_weight(), settings or self.settings

        def step(model: nn.Module) -> StepLosses:
            losses = cgc_step(model, crops, pair, cgc_weight, settings)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses.loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return losses

        shapes = (tuple(crops.images.shape), None if pair is None else tuple(pair.view.shape))
        return self.forward.run(step, shapes, self.optimizer)

    # ---- state ----------------------------------------------------------------------
    def stop_non_finite(self, what: str, step: int) -> None:
        self.checkpointer.stop_non_finite(what, step)

    def save(self) -> None:
        with self.times.part("checkpoints"):
            self.checkpointer.save()

    def resume(self) -> bool:
        resumed = self.checkpointer.resume(labeled_per_step=self.cfg.batch_labeled)
        if resumed:
            self.runlog.purge_after = self.state.step  # TensorBoard's steps after the checkpoint go
        return resumed

    # ---- loop ------------------------------------------------------------------------
    def loaders(self) -> list:
        """Iterators of ready batches: labeled, and unlabeled if used, from the current step."""
        return training_streams(StreamSettings.of(self.cfg), self.bundle, (self.batch_l, self.batch_u),
                                self.pair_on_labeled, self.device, self.dist.rank, self.dist.world, self.state.step)

    def wrap(self) -> nn.Module:
        """The module the step's forwards call, before any compilation: DDP over the model in a
        distributed run, the model itself otherwise."""
        if not self.dist.enabled:
            return self.model
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def compiles(self) -> bool:
        """Whether the training forward is compiled: ``--compile`` (default: on CUDA), declined up
        front, in one line, where the explainer differentiates the logits with respect to the
        features (a ViT's, any head without a closed form): both come out of one compiled graph as
        separate outputs, so autograd cannot relate them, and every such run would compile, fail
        at its first step and run eager."""
        wanted = compiles(self.cfg.compile, self.device.type)
        explainer = explainers.get(self.cfg.explainer)
        if wanted and self.cfg.forwards_pairs and explainer.needs_autograd(self.model):
            log.warning("torch.compile off: the %s explainer differentiates this model's logits with respect to its "
                        "features, which a compiled forward cannot give; the run trains eager (--no-compile says so "
                        "without this line)", self.cfg.explainer)
            return False
        return wanted

    def set_lr(self) -> None:
        factor = self.schedule.factor(self.state.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def fit(self) -> dict:
        startup = time.perf_counter()
        self.resume()
        self.forward = CompiledForward(self.model, self.wrap, self.compiles())
        self.log_start()
        # SIGTERM, SIGUSR2 and SIGINT are caught from here on: until the first step they stop the run
        # at once (the checkpoint on disk holds its state), in the loop at the next step boundary.
        with SignalCheckpoint(self.dist, self.lock) as self.preemption:
            self.preemption.stop_at_once(self.state.step)
            streams = self.loaders()
            try:
                evaluator = Evaluator(self.eval_settings, self.bundle, self.device, self.dist)
                self.reporter = Reporter(self.runlog, self.state, self.times, self.device, self.schedule,
                                         self.images_per_step(), shows_bar(self.dist.is_main))
                self.model.train()
                self.times.add("startup", time.perf_counter() - startup)
                self.times.start_loop()
                with self.reporter.progress_bar():
                    return self.loop(streams, evaluator)
            finally:  # every stream's workers stop: none speaks after a failing one's error line
                for stream in streams:
                    stream.close()

    def loop(self, streams: list, evaluator: Evaluator) -> dict:
        """The epochs: a step, its numbers, at log points a line, at epoch ends the evaluation, and
        a checkpoint at each epoch end, every --checkpoint-every steps and on a stop signal."""
        cfg, sched, report = self.cfg, self.schedule, self.reporter
        self.preemption.stop_at_once(None)
        report.restart_clock()  # the first line's window starts with the first step
        while self.state.step < sched.total_steps:
            self.set_lr()
            labeled, unlabeled = report.next_batches(streams)
            losses = self.training_step(labeled, unlabeled)
            self.state.step += 1
            report.add(losses, labeled, unlabeled, self.dist.world)
            end_of_epoch = self.state.step % sched.steps_per_epoch == 0 or self.state.step == sched.total_steps
            if end_of_epoch or self.state.step % cfg.log_every == 0:
                self.check_health()  # a host-device sync: the window's time is then real compute
                report.write_line(*(group["lr"] for group in self.optimizer.param_groups))
            if end_of_epoch:
                self.end_epoch(evaluator)
                report.restart_clock()
            elif cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                self.check_health()
                self.save()
            self.obey_stop_request()
        # The last checkpoint holds the final step: a signal during the final evaluation stops at once.
        self.preemption.stop_at_once(self.state.step)
        return self.finish(evaluator)

    def obey_stop_request(self) -> None:
        """Between steps: a lost run lock stops the run; a stop signal checkpoints and hands over."""
        stop = self.preemption.requested()
        if stop == Stop.LOCK_LOST:
            raise RunDirError(f"{self.run_dir}: {self.lock.lost if self.lock else 'the run lock was taken over'}; "
                              f"this run stops at step {self.state.step} and writes nothing more into the folder")
        if stop == Stop.SIGNAL and self.state.step < self.schedule.total_steps:
            self.stop_at_signal()

    def images_per_step(self) -> int:
        """Images one step forwards, all processes: the labeled crops and both views of the unlabeled pairs."""
        return self.cfg.batch_labeled + (2 * self.cfg.batch_unlabeled if self.uses_unlabeled else 0)

    def stop_at_signal(self) -> None:
        """A stop signal arrived: checkpoint this step, then hand over to the scheduler (or stop
        with the command to resume). Signals arriving during the write wait for it."""
        self.preemption.saving = True
        self.check_health()
        self.save()
        log.warning("%s at step %d: checkpoint.pt written", signal_name(self.preemption.received), self.state.step)
        self.preemption.hand_over(self.state.step)

    def batchnorm_scope(self) -> str:
        """What one BatchNorm normalises over, in words (the log and the dry run say it)."""
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            return "nothing (the model has no BatchNorm)"
        if self.cfg.bn_geometry == "batch":
            return "each process' batch"
        if self.bn_processes > 1:
            return f"one replica over {self.bn_processes} processes (SyncBatchNorm)"
        if self.geometry.processes > 1:  # a replica spans processes, but SyncBatchNorm needs CUDA
            return (f"each process' part of a replica (a replica spans {self.geometry.processes} processes; "
                    "SyncBatchNorm needs CUDA, so on CPU the number of processes changes the statistics)")
        return f"{self.geometry.local} replica(s) per process"

    def check_health(self) -> None:
        """Stop on a non-finite loss (naming the step) or too many unreadable images. Called
        at log points only: the check is a host-device sync."""
        bad_step = self.reporter.nonfinite_step()  # agreed by every process
        if bad_step is not None:
            self.stop_non_finite("loss", bad_step)
        seen = self.state.labeled_seen + (self.state.step * self.cfg.batch_unlabeled if self.uses_unlabeled else 0)
        # Every process's unreadable images (seen counts all processes'): all stop, or none.
        bad = int(D.all_reduce_sum(torch.tensor([self.state.bad_images], device=self.device)))
        if bad > self.cfg.max_bad_fraction * seen and bad > 0:
            raise BadDataError(
                f"{bad} unreadable images among {seen} loaded (more than --max-bad-fraction "
                f"{self.cfg.max_bad_fraction}); check the dataset (the warnings above name the files)"
            )

    def images_seen(self) -> dict:
        return dict(labeled_images=self.state.labeled_seen,
                    unlabeled_images=self.state.step * self.cfg.batch_unlabeled if self.uses_unlabeled else 0)

    def end_epoch(self, evaluator: Evaluator) -> None:
        """The epoch's row: its mean losses, and the evaluation where one is due (keeping the best
        checkpoint by top-1); then metrics.csv, the log line and the checkpoint."""
        epoch = math.ceil(self.state.step / self.schedule.steps_per_epoch)  # a --max-steps stop counts as its epoch
        D.broadcast_buffers(self.model)  # every process evaluates, and the checkpoint holds, rank 0's statistics
        row = dict(epoch=epoch, step=self.state.step, **self.reporter.epoch_means(self.dist.world),
                   lr_trunk=self.optimizer.param_groups[0]["lr"], lr_head=self.optimizer.param_groups[1]["lr"],
                   bad_images=self.state.bad_images, **self.images_seen())
        row.update(self.evaluate_epoch(evaluator, epoch))
        if self.dist.is_main:
            self.runlog.epoch(row)
        log.info(
            "epoch %d: %s", epoch, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        )
        self.state.last_row = row
        self.save()

    def evaluate_epoch(self, evaluator: Evaluator, epoch: int) -> dict:
        """The evaluation due at this epoch ({} where none is): top-1 every --eval-every epochs, the
        full one (CH, kNN, ...) every --ch-every and at the last; model_best.pt by top-1, as the
        released scripts kept model_best.pth.tar."""
        cfg, last = self.cfg, self.state.step >= self.schedule.total_steps
        full = last or bool(cfg.ch_every and epoch % cfg.ch_every == 0)
        if not (full or (cfg.eval_every and epoch % cfg.eval_every == 0)):
            return {}
        with self.times.part("final_eval" if last else "epoch_eval"):
            row = evaluator.run(self.model, progress=True, full=full)
            self.gallery_to_tensorboard()
        self.model.train()
        for key, value in row.items():
            if isinstance(value, float) and not math.isfinite(value) and key != "ch_released_swav":
                log.warning("validation %s is %s at epoch %d: the model or its heatmaps diverged", key, value, epoch)
        if self.state.best is None or row["top1"] > self.state.best["top1"]:
            self.state.best = dict(epoch=epoch, step=self.state.step, top1=row["top1"], top5=row["top5"])
            self.save_best()
        return row

    def gallery_to_tensorboard(self) -> None:
        """The evaluation's Grad-CAM gallery as a TensorBoard image (main process; --gallery 0: none),
        drawn with PIL: the matplotlib figure took a second per evaluation, a sixth of the CPU demo."""
        if self.dist.is_main and self.cfg.gallery and self.runlog.writes:
            from semisup.eval.gallery import gallery_grid
            grid = gallery_grid(self.model, self.bundle, self.eval_settings, self.device)
            self.runlog.image("gallery", grid, self.state.step)

    def save_best(self) -> None:
        with self.times.part("checkpoints"):
            self.checkpointer.save_best()

    def log_start(self) -> None:
        cfg, d = self.cfg, self.dist
        if random_start_warning(cfg):
            log.warning("%s", random_start_warning(cfg))
        never = [m for m in cfg.lr_milestones if m >= cfg.epochs]
        if never:  # accepted (a short trial of a long recipe), but said: the rate never decays there
            log.warning("--lr-milestones %s: at or beyond --epochs %s, the learning rate never decays there",
                        " ".join(map(str, never)), cfg.epochs)
        threads = f"{self.threads.threads} thread(s) per process: {self.threads.why}" if self.threads else ""
        log.info(
            "run dir %s; %d process(es) on %s; %s; amp %s; torch.compile %s", self.run_dir, d.world, self.device,
            threads, self.amp_dtype or "off", "on" if self.forward.compiled else "off",
        )
        log.info("trunk: %s", describe_start(cfg, self.pretrained_report))
        if coverage_note(self.bundle.summary):
            log.info("%s", coverage_note(self.bundle.summary))
        log.info("batch: labeled %d global / %d per process, unlabeled %s; %d steps per epoch, %d epochs, %d steps",
                 cfg.batch_labeled, self.batch_l,
                 f"{cfg.batch_unlabeled} global / {self.batch_u} per process" if self.uses_unlabeled else "not used",
                 self.schedule.steps_per_epoch, cfg.epochs, self.schedule.total_steps)
        per_process = self.pair_batch()[1]
        log.info(
            "released replicas: %d replica(s) of %d images; BatchNorm over %s; pair flip protocol %s%s",
            self.geometry.replicas,
            cfg.group_size,
            self.batchnorm_scope(),
            cfg.flip_protocol,
            (
                f"; InfoNCE: {self.negatives_per_anchor(per_process)} negatives per anchor"
                if cfg.cgc_weight > 0 and self.negatives_per_anchor(per_process) is not None
                else ""
            ),
        )

    def best_metrics(self, evaluator: Evaluator, final: dict) -> dict:
        """The full evaluation of the best-top-1 checkpoint (the final one's when they coincide)."""
        if self.state.best is None:
            return {}
        if self.state.best["epoch"] == final.get("epoch"):
            return dict(final)
        model = build_model(self.cfg.arch, len(self.bundle.classes)).to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        model.load_state_dict(ckpt.load(RunFiles(self.run_dir).best)["model"])
        return dict(
            epoch=self.state.best["epoch"], step=self.state.best["step"],
            **evaluator.run(model, progress=True, full=True),
        )

    def finish(self, evaluator: Evaluator) -> dict:
        final = {k: v for k, v in self.state.last_row.items() if isinstance(v, (int, float))}
        with self.times.part("final_eval"):
            best = self.best_metrics(evaluator, final)
            if self.dist.is_main and self.cfg.gallery:
                from semisup.eval.gallery import save_gallery
                save_gallery(
                    [self.model], [self.cfg.method], self.bundle, self.eval_settings, self.device,
                    RunFiles(self.run_dir).gallery,
                )
        scheduled = self.schedule.steps_per_epoch * self.cfg.epochs
        result = dict(
            method=self.cfg.method,
            labeled_fraction=self.cfg.labeled_fraction,
            # What the split actually labeled (a --split-file sets it, not --labeled-fraction).
            labeled_images=len(self.bundle.labeled_indices),
            train_images=len(self.bundle.labeled),
            dataset_digest=self.bundle.summary.get("dataset_digest"),  # the dataset's identity, not its folder name
            classes=len(self.bundle.classes),  # which metrics mean something (top-5 of 3 classes does not)
            seed=self.cfg.seed,
            arch=self.cfg.arch,
            pretrained=self.cfg.pretrained,
            # The start's identity: its trunk tensors' digest, not its file name.
            pretrained_sha256=(self.pretrained_report or {}).get("trunk_sha256"),
            steps=self.state.step,
            scheduled_steps=scheduled,
            truncated=self.state.step < scheduled,  # stopped by --max-steps: not a result of the recipe
            final=final,
            best=best,
            ce_baseline=self.cfg.ce_mode if self.cfg.cgc_weight == 0 else None,
            process_counts=self.state.process_counts,  # more than one entry: resumed on another number of processes
            threads=dict(count=self.threads.threads, why=self.threads.why) if self.threads else None,
            weights_sha256=weights_digest(self.model),
            note=(
                "'final' is the last epoch; 'best' is the epoch of highest validation top-1 (model_best.pt, as the "
                "released scripts kept): a selection on the validation set, reported beside 'final', never instead."
            ),
        )
        result["seconds"] = self.times.summary()  # this start of the run only (a resumed run: since its resume)
        if self.dist.is_main:
            write_json_atomic(
                RunFiles(self.run_dir).final, result
            )  # a kill here must not leave a half-written "finished" run
            self.runlog.hparams(self.cfg.to_dict(), result)
            self.runlog.close()
        return result


def weights_digest(model: nn.Module) -> str:
    """sha256 of all parameters: equal on every process of a correct DDP run."""
    import hashlib
    digest = hashlib.sha256()
    for _, p in sorted(model.named_parameters()):
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train(cfg: Config) -> dict:
    """Train (or resume) one run; returns the final.json content (for --dry-run, the summary).
    The one entry point of run.py and the cluster jobs."""
    return run_training(cfg)[0]


def run_training(cfg: Config) -> tuple[dict, Trainer]:
    """As :func:`train`, also returning the Trainer (tests compare weights across processes).

    Order matters for trust: the run directory is checked and locked first, then the data and the
    model are built (a bad --data or --pretrained stops here), and only then is anything in the
    run directory written or, with --overwrite, a finished run's files moved aside."""
    check_device(cfg.device)  # a GPU asked for where there is none: one line, before anything is created
    if cfg.dry_run:
        setup_logging(True)
        summary, trainer = check_start(cfg, decode_check=True)
        print_summary(summary)
        print(planner_line(cfg, summary))
        return summary, trainer
    dist = D.setup(cfg.device)
    run, file_log, lock = None, None, None
    try:
        run = prepare_run_dir(cfg, check_holder=dist.is_main)
        created = not run.path.exists()  # only a folder this run made is removed again if it fails to start
        if dist.is_main:
            lock = acquire_lock(run.path)
            ckpt.remove_temporaries(run.path)  # left by a process of this run killed mid-write
        D.barrier()
        setup_logging(dist.is_main)
        bundle = build_data(cfg)
        check_loaders(cfg, bundle, dist.world)
        threads = use_threads(cfg, bundle)
        trainer = Trainer(cfg, dist, run.path, bundle)
        trainer.lock, trainer.threads = lock, threads
        log.info("%s", run.note)  # said once the data and the model are there: a run that cannot start says only why
        if dist.is_main:
            archived = archive_previous(run.path) if run.replaces_finished else None
            save_config(cfg, RunFiles(run.path).config, code=code_version())
            file_log = log_to_file(RunFiles(run.path).log)
            if archived:
                log.info("--overwrite: the finished run's files were moved to %s", archived)
            if lock.took_over:
                log.warning("took over the run lock of a run that is gone (%s)", lock.took_over)
        D.barrier()
        result = trainer.fit()
        if dist.is_main:
            print()
            print(format_results(result_rows(cfg, result), not_meaningful(len(bundle.classes), cfg.arch)))
            print("* best: the epoch of highest validation top-1 (model_best.pt), a selection on the validation set")
            print(next_commands(run.path, gallery=bool(cfg.gallery)))
        return result, trainer
    finally:
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()
        if lock is not None:
            lock.release()
        if run is not None and dist.is_main:
            if created and run.path.is_dir() and not any(run.path.iterdir()):
                run.path.rmdir()  # a run that failed before writing anything leaves no empty folder behind
        D.cleanup()


def data_identity(bundle: DataBundle) -> dict:
    """What the run trains on, as a checkpoint records it: the dataset's files' digest and the
    labeled subset's (a resume compares them with the data as it is then)."""
    labeled = np.asarray(bundle.labeled_indices, dtype=np.int64)
    paths = getattr(bundle.labeled, "paths", None)
    if paths is not None and hasattr(paths, "names"):  # the labeled files by name: an added file shifts indices
        names = paths.names()
        key = "\0".join(names[i] for i in labeled).encode("utf-8", "surrogateescape")
    else:  # images held in memory (the demo): their positions are what they are
        key = labeled.tobytes()
    return dict(dataset=bundle.summary.get("dataset_digest"), labeled=len(labeled),
                labeled_sha256=hashlib.sha256(key).hexdigest(), classes=list(bundle.classes))


def check_loaders(cfg: Config, bundle: DataBundle, world: int) -> None:
    """The loader workers' shared memory and open files, checked by the run and its dry run alike
    (:mod:`semisup.data.loaderlimits`): one line naming the limit and the fix."""
    unlabeled = cfg.batch_unlabeled // world if bundle.unlabeled is not None else 0
    streams = batch_bytes(cfg.image_size, cfg.batch_labeled // world, unlabeled, cfg.full_supervision)
    changed = check_loader_limits(cfg.workers, streams)
    if changed:
        log.info("%s", changed)


def use_threads(cfg: Config, bundle: DataBundle, processes: int | None = None) -> cpus.ThreadChoice:
    """Set this process's torch threads (:mod:`semisup.cpus`): its CPUs less its loader workers."""
    streams = 2 if bundle.unlabeled is not None else 1
    choice = cpus.choose_threads(cfg.threads, cfg.workers * streams, processes)
    torch.set_num_threads(choice.threads)
    return choice


def check_start(cfg: Config, decode_check: bool, world: int = 1, this_machine: bool = True) -> tuple[dict, Trainer]:
    """Everything a run does before its first step, writing nothing: the run directory's state
    (finished, held, other settings), the dataset, split and boxes, the model and its pretrained
    trunk; with ``decode_check`` also the labeled and validation images and a sample of the
    unlabeled stream are decoded. Returns the dry-run summary and the (CPU) Trainer. The same
    function runs ``run.py --dry-run`` and the checks ``jobs/submit.py`` makes before queueing."""
    prepare_run_dir(cfg)
    bundle = build_data(cfg, decode_check=decode_check)
    if this_machine:  # the checks before queueing run on the submitting machine, not the job's node
        check_loaders(cfg, bundle, world)
    trainer = Trainer(
        cfg, D.Dist(world=world, device=torch.device("cpu")), None, bundle
    )  # the job's geometry, built on the CPU here
    summary = dict(bundle.summary)
    summary["model"] = cfg.arch
    summary["trunk"] = describe_start(cfg, trainer.pretrained_report)
    summary["trunk_tensors_loaded"] = trainer.pretrained_report["loaded"] if trainer.pretrained_report else 0
    summary["steps_per_epoch"] = trainer.schedule.steps_per_epoch
    negatives = trainer.negatives_per_anchor(trainer.pair_batch()[1])
    if cfg.cgc_weight > 0 and negatives is not None:
        summary["negatives_per_anchor"] = negatives
    summary["batchnorm"] = (f"{cfg.bn_geometry}: {trainer.geometry.replicas} replica(s) of {cfg.group_size}; over "
                            f"{trainer.batchnorm_scope()}")
    summary["flip_protocol"] = cfg.flip_protocol
    if coverage_note(bundle.summary):
        summary["box_metrics"] = coverage_note(bundle.summary)
    summary["total_steps"] = trainer.schedule.total_steps
    streams = 2 if bundle.unlabeled is not None else 1
    choice = cpus.choose_threads(cfg.threads, cfg.workers * streams, world if world > 1 else None)
    summary["threads"] = f"{choice.threads} per process ({choice.why})"
    return summary, trainer
