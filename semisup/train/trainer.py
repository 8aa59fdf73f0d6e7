"""The training entry point shared by ``semisup/run.py`` and the cluster jobs.

One step, as in the method: cross-entropy on the labeled batch; Grad-CAM of the unlabeled
view for its predicted class and of the augmented view for the same class; the consistency
loss between them; ``loss = ce + lambda * consistency``. With ``--labeled-fraction 1.0`` the
consistency loss is applied to the labeled images with their true class instead.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from semisup import checkpoint as ckpt
from semisup import cpus
from semisup import distributed as D
from semisup.config import Config, ConfigError, check_device, compiles, save_config
from semisup.data.datasets import DataBundle, EpochSampler, StreamSampler, TrainDataset, make_loader
from semisup.data.formats import build_data
from semisup.distributed import amp_dtype
from semisup.errors import UserError
from semisup.eval.evaluator import Evaluator, format_results
from semisup.files import open_for_append, write_json_atomic
from semisup.method import cgc, explainers
from semisup.models import replicas as R
from semisup.models.base import build_model
from semisup.models.loading import load_pretrained
from semisup.runfiles import RunFiles
from semisup.train.checkpointer import Checkpointer, NonFiniteLoss, UnreadableCheckpoint  # noqa: F401 (re-exported)
from semisup.train.compiling import CompiledForward
from semisup.train.preemption import SignalCheckpoint, Stop, signal_name
from semisup.train.rundir import RunDirError, acquire_lock, archive_previous, prepare_run_dir  # noqa: F401 (RunDirError: re-exported)
from semisup.train.runlog import RunLog
from semisup.train.state import TrainState
from semisup.train.step import StepLosses, StepSettings, cgc_step, to_device
from semisup.train.timing import PartTimes
from semisup.version import code_version

log = logging.getLogger(__name__)

LABELED_STREAM, UNLABELED_STREAM = 0, 1


class BadDataError(UserError, RuntimeError):
    """More unreadable images than --max-bad-fraction allows."""


LOG_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


class _CurrentStderr(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr`` is when a line is logged (a
    progress bar's redirect, a caller that swapped it), never to a stream closed since."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(is_main: bool) -> None:
    """Console logging: only this package speaks at INFO, and only on rank 0."""
    root = logging.getLogger()
    if getattr(root, "_semisup_configured", False):
        return
    handler = _CurrentStderr()
    handler.setFormatter(LOG_FORMAT)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("semisup").setLevel(logging.INFO if is_main else logging.WARNING)
    root._semisup_configured = True


class RunLogFile(logging.StreamHandler):
    """train.log, appended without following a link out of the run folder; a full disk ends this copy
    of the log with one line (the console keeps it), never a traceback for every record."""

    def __init__(self, path: Path):
        super().__init__(open_for_append(path))
        self.path = path

    def handleError(self, record) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError):
            return super().handleError(record)
        logging.getLogger().removeHandler(self)
        sys.stderr.write(f"warning: {self.path} could not be written ({err.strerror or err}); the log goes on in the "
                         "console only\n")


def log_to_file(path: Path) -> logging.Handler | None:
    """Also write the log to ``path`` (train.log), from the moment the run has started; None where
    the file cannot be made (a full disk: the console keeps the log; a link: refused earlier)."""
    try:
        handler = RunLogFile(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise
        sys.stderr.write(f"warning: {path} could not be written ({err.strerror or err}); the log goes on in the "
                         "console only\n")
        return None
    handler.setFormatter(LOG_FORMAT)
    logging.getLogger().addHandler(handler)
    return handler


@dataclass
class Schedule:
    """Learning-rate schedule in optimizer steps (milestones given in epochs)."""
    steps_per_epoch: int
    total_steps: int
    milestones: tuple[int, ...]
    gamma: float

    def factor(self, step: int) -> float:
        return self.gamma ** sum(step >= m * self.steps_per_epoch for m in self.milestones)


class Trainer:
    def __init__(self, cfg: Config, dist: D.Dist, run_dir: Path, bundle: DataBundle):
        self.cfg, self.dist, self.run_dir, self.bundle = cfg, dist, run_dir, bundle
        self.lock = None  # the main process's hold on the run folder (run_training sets it)
        self.threads = None  # the torch threads this process took and why (run_training sets them)
        self.device = dist.device
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # as the released scripts set it: fastest kernels for each shape
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.arch, len(bundle.classes))
        self.pretrained_report = load_pretrained(self.model, cfg.pretrained) if cfg.pretrained else None
        self.model.to(self.device)
        self.channels_last = D.uses_channels_last(cfg, self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.batch_l, self.batch_u = cfg.batch_labeled // dist.world, cfg.batch_unlabeled // dist.world
        self.uses_unlabeled = bundle.unlabeled is not None
        self.pair_on_labeled = cfg.full_supervision and cfg.forwards_pairs
        # The released run's DataParallel replicas of --group-size images (2 x 64 at batch 128):
        # the InfoNCE groups always; BatchNorm and the losses' weighting with --bn-geometry replicas.
        self.geometry = R.geometry(
            cfg.batch_unlabeled if self.uses_unlabeled else cfg.batch_labeled, cfg.group_size, dist.world
        )
        self.loss_replicas = self.geometry.local if cfg.bn_geometry == "replicas" else 1
        self.check_negatives()
        self.bn_processes = 1
        if cfg.bn_geometry == "replicas" and self.geometry.local > 1:
            R.use_replica_batchnorm(self.model, self.geometry.local)
        elif cfg.bn_geometry == "replicas" and self.geometry.processes > 1 and self.device.type == "cuda":
            # A replica spans processes: SyncBatchNorm over them (PyTorch has none on CPU).
            self.bn_processes = self.geometry.processes
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(
                self.model, process_group=D.process_subgroup(self.bn_processes)
            )
        head, trunk = self.model.head_parameters(), self.model.trunk_parameters()
        self.optimizer = torch.optim.SGD([dict(params=trunk, lr=cfg.lr_trunk), dict(params=head, lr=cfg.lr_head)],
                                         momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.base_lrs = [cfg.lr_trunk, cfg.lr_head]
        self.amp_dtype = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # An epoch is one pass over the labeled set, its last batch partial (len(train_loader)).
        steps_per_epoch = math.ceil(math.ceil(len(bundle.labeled_indices) / dist.world) / self.batch_l)
        total = (
            steps_per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
        )
        self.schedule = Schedule(steps_per_epoch, total, tuple(cfg.lr_milestones), cfg.lr_gamma)
        self.state = TrainState(process_counts=[dist.world])
        self.times = PartTimes()
        self.forward = CompiledForward(self.model, lambda: self.model, enabled=False)  # fit() sets the run's
        self.runlog = RunLog(run_dir, dist.is_main)
        self.checkpointer = Checkpointer(run_dir, dist, self.model, self.optimizer, self.scaler, self.state,
                                         cfg.to_dict(), steps_per_epoch)
        self.settings = self.step_settings()

    # ---- one optimisation step -------------------------------------------------------
    def negatives_per_anchor(self, local_batch: int, fewest: bool = False) -> int:
        """InfoNCE negatives of an anchor in a full batch of ``local_batch`` per process (``fewest``:
        in the smallest replica, else the first)."""
        if self.geometry.processes > 1:
            return local_batch * self.geometry.processes - 1
        sizes = R.replica_sizes(local_batch, self.geometry.local)
        return (min(sizes) if fewest else sizes[0]) - 1

    def check_negatives(self) -> None:
        """Refuse a CGC run whose anchors would have no negative: its InfoNCE would be exactly 0
        every step (--batch-unlabeled 1, or a replica of one image)."""
        cfg = self.cfg
        if cfg.cgc_weight == 0 or cfg.consistency != "cgc":
            return
        key = "batch_labeled" if self.pair_on_labeled else "batch_unlabeled"
        per_process = self.batch_l if self.pair_on_labeled else self.batch_u
        if self.negatives_per_anchor(per_process, fewest=True) < 1:
            raise ConfigError(
                f"--{key.replace('_', '-')} {getattr(cfg, key)} with --group-size {cfg.group_size} on "
                f"{self.dist.world} process(es) leaves an anchor of the consistency loss without a negative (InfoNCE "
                "would be 0 at every step); give at least 2 images to every replica"
            )

    def consistency(
        self, cam_aug: torch.Tensor, cam: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor
    ) -> torch.Tensor:
        cfg = self.cfg
        if cfg.consistency == "l2":
            return self.replica_weighted(cgc.gcc_l2_per_sample(cam_aug, cam, boxes, flips, cfg.cam_size))
        if self.geometry.processes > 1:
            # A replica spans processes: its negatives come from the others, with gradient.
            all_aug, offset = D.gather_with_grad(cam_aug)
            return cgc.cgc_loss(
                cam_aug, cam, boxes, flips, cfg.temperature, cfg.cam_size, cam.shape[0] * self.geometry.processes,
                cfg.cgc_negatives, all_aug, offset,
            )
        return cgc.cgc_loss(cam_aug, cam, boxes, flips, cfg.temperature, cfg.cam_size, negatives=cfg.cgc_negatives,
                            replicas=self.geometry.local)

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
    def loaders(self):
        """Iterators of ready batches: labeled, and unlabeled if used."""
        cfg, b, dist = self.cfg, self.bundle, self.dist
        pin = self.device.type == "cuda"
        if cfg.decode == "gpu":
            from semisup.data.gpu_decode import EncodedTrainDataset, collate_encoded, decode_and_transform
            dataset_type, collate = EncodedTrainDataset, collate_encoded
            finish = lambda batch: decode_and_transform(batch, self.device, cfg.image_size, cfg.resize_size)
        else:
            dataset_type, collate, finish = TrainDataset, None, (lambda batch: batch)
        options = dict(flip_protocol=cfg.flip_protocol, draft=cfg.decode == "cpu-draft")
        labeled = dataset_type(
            b.labeled, b.labeled_indices, cfg.image_size, cfg.resize_size, cfg.crop_scale_min, crop=True,
            pair=self.pair_on_labeled, **options,
        )
        sampler = EpochSampler(
            len(labeled), self.batch_l, cfg.seed, LABELED_STREAM, dist.rank, dist.world, start_batch=self.state.step
        )
        streams = [map(finish, make_loader(labeled, sampler, cfg.workers, pin, collate))]
        if self.uses_unlabeled:
            unlabeled = dataset_type(
                b.unlabeled, b.unlabeled_indices, cfg.image_size, cfg.resize_size, cfg.crop_scale_min, crop=False,
                pair=True, **options,
            )
            sampler = StreamSampler(
                len(unlabeled), self.batch_u, cfg.seed, UNLABELED_STREAM, dist.rank, dist.world,
                start_batch=self.state.step,
            )
            streams.append(map(finish, make_loader(unlabeled, sampler, cfg.workers, pin, collate)))
        return streams

    def wrap(self) -> nn.Module:
        """The module the step's forwards call, before any compilation: DDP over the model in a
        distributed run, the model itself otherwise."""
        if not self.dist.enabled:
            return self.model
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )

    def set_lr(self) -> None:
        factor = self.schedule.factor(self.state.step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def fit(self) -> dict:
        cfg, sched = self.cfg, self.schedule
        startup = time.perf_counter()
        self.resume()
        self.forward = CompiledForward(self.model, self.wrap, compiles(cfg.compile, self.device.type))
        self.log_start()
        # SIGTERM, SIGUSR2 and SIGINT are caught from here on: until the first step they stop the run
        # at once (the checkpoint on disk holds its state), in the loop at the next step boundary.
        with SignalCheckpoint(self.dist, self.lock) as self.preemption:
            self.preemption.stop_at_once(self.state.step)
            streams = self.loaders()
            evaluator = Evaluator(cfg, self.bundle, self.device, self.dist)
            window = torch.zeros(3, device=self.device)  # losses since the last log line
            self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)
            self.model.train()
            # The bar only where a person watches a terminal; Slurm logs get the step lines instead.
            bar = tqdm(total=sched.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                       disable=not (self.dist.is_main and sys.stderr.isatty()))
            self.times.add("startup", time.perf_counter() - startup)
            self.times.start_loop()
            with logging_redirect_tqdm():  # log lines go through the bar, never glued onto it
                result = self._loop(streams, evaluator, window, bar)
            bar.close()
        return result

    def _loop(self, streams, evaluator: Evaluator, window: torch.Tensor, bar) -> dict:
        cfg, sched = self.cfg, self.schedule
        window_steps, window_start, data_wait = 0, time.perf_counter(), 0.0
        self.preemption.stop_at_once(None)
        while self.state.step < sched.total_steps:
            self.set_lr()
            waited = time.perf_counter()
            labeled = next(streams[0])
            unlabeled = next(streams[1]) if self.uses_unlabeled else None
            data_wait += time.perf_counter() - waited
            self.times.add("data_wait", time.perf_counter() - waited)
            losses = self.training_step(labeled, unlabeled)
            stacked = torch.stack([losses.ce, losses.consistency, losses.loss.detach().float()])
            window += stacked
            self.state.epoch_sums = self.state.epoch_sums.to(self.device) + torch.cat(
                [stacked.double(), stacked.new_ones(1).double()]
            )
            self.first_nonfinite = torch.where(
                torch.isfinite(losses.loss.detach()) | (self.first_nonfinite >= 0), self.first_nonfinite,
                torch.full_like(self.first_nonfinite, self.state.step),
            )
            # Bad-file counts come from the loader on the CPU: no device sync.
            self.state.bad_images += int(labeled["bad"].sum()) + (
                int(unlabeled["bad"].sum()) if unlabeled is not None else 0
            )
            self.state.labeled_seen += len(labeled["label"]) * self.dist.world
            self.state.step += 1
            window_steps += 1
            bar.update(1)
            end_of_epoch = self.state.step % sched.steps_per_epoch == 0 or self.state.step == sched.total_steps
            logged = self.state.step % cfg.log_every == 0 or end_of_epoch
            if logged:
                self.check_health()  # a host-device sync: the window's time below is real compute
                mean = (window / window_steps).tolist()
                bar.set_postfix(
                    ce=f"{mean[0]:.3f}", cons=f"{mean[1]:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.3g}"
                )
                self.log_step(mean, window_steps, time.perf_counter() - window_start, data_wait)
                window.zero_()
                window_steps, window_start, data_wait = 0, time.perf_counter(), 0.0
            if end_of_epoch:
                self.end_epoch(evaluator)
                window_start = time.perf_counter()  # evaluation time is not training speed
            elif cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                self.check_health()
                self.save()
            stop = self.preemption.requested()
            if stop == Stop.LOCK_LOST:
                raise RunDirError(f"{self.run_dir}: {self.lock.lost if self.lock else 'the run lock was taken over'}; "
                                  f"this run stops at step {self.state.step} and writes nothing more into the folder")
            if stop == Stop.SIGNAL and self.state.step < sched.total_steps:
                self.stop_at_signal()
        # The last checkpoint holds the final step: a signal during the final evaluation stops at once.
        self.preemption.stop_at_once(self.state.step)
        return self.finish(evaluator)

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
        if self.cfg.bn_geometry == "batch":
            return "each process' batch"
        if self.bn_processes > 1:
            return f"one replica over {self.bn_processes} processes (SyncBatchNorm)"
        if self.geometry.processes > 1:  # a replica spans processes, but SyncBatchNorm needs CUDA
            return (f"each process' part of a replica (a replica spans {self.geometry.processes} processes; "
                    "SyncBatchNorm needs CUDA, so on CPU the number of processes changes the statistics)")
        return f"{self.geometry.local} replica(s) per process"

    def log_step(self, mean: list[float], steps: int, seconds: float, data_wait: float) -> None:
        """The numbers of the last ``steps`` steps (``seconds`` of wall time, ``data_wait`` of it
        waiting for batches) for the step line, TensorBoard and progress.json."""
        cfg, sched = self.cfg, self.schedule
        images = steps * (cfg.batch_labeled + (2 * cfg.batch_unlabeled if self.uses_unlabeled else 0))
        per_step = seconds / max(steps, 1)
        memory = torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else float("nan")
        numbers = dict(ce=mean[0], consistency=mean[1], loss=mean[2], lr_trunk=self.optimizer.param_groups[0]["lr"],
                       lr_head=self.optimizer.param_groups[1]["lr"],
                       images_per_s=images / max(seconds, 1e-9), data_s_per_step=data_wait / max(steps, 1),
                       compute_s_per_step=(seconds - data_wait) / max(steps, 1), peak_gpu_gib=memory,
                       eta_s=(sched.total_steps - self.state.step) * per_step)
        self.runlog.step(
            math.ceil(self.state.step / sched.steps_per_epoch), self.state.step, sched.total_steps, numbers
        )

    def check_health(self) -> None:
        """Stop on a non-finite loss (naming the step) or too many unreadable images. Called
        at log points only: the check is a host-device sync."""
        bad_step = int(self.first_nonfinite)
        if bad_step >= 0:
            self.stop_non_finite("loss", bad_step)
        seen = self.state.labeled_seen + (self.state.step * self.cfg.batch_unlabeled if self.uses_unlabeled else 0)
        if self.state.bad_images > self.cfg.max_bad_fraction * seen and self.state.bad_images > 0:
            raise BadDataError(
                f"{self.state.bad_images} unreadable images among {seen} loaded (more than --max-bad-fraction "
                f"{self.cfg.max_bad_fraction}); check the dataset (the warnings above name the files)"
            )

    def images_seen(self) -> dict:
        return dict(labeled_images=self.state.labeled_seen,
                    unlabeled_images=self.state.step * self.cfg.batch_unlabeled if self.uses_unlabeled else 0)

    def end_epoch(self, evaluator: Evaluator) -> None:
        cfg = self.cfg
        epoch = math.ceil(self.state.step / self.schedule.steps_per_epoch)  # a --max-steps stop counts as its epoch
        sums = D.all_reduce_sum(self.state.epoch_sums.to(self.device).clone()).cpu() / self.dist.world
        row = dict(
            epoch=epoch, step=self.state.step, train_ce=sums[0].item() / sums[3].item(),
            train_consistency=sums[1].item() / sums[3].item(), train_loss=sums[2].item() / sums[3].item(),
            lr_trunk=self.optimizer.param_groups[0]["lr"], lr_head=self.optimizer.param_groups[1]["lr"],
            bad_images=self.state.bad_images, **self.images_seen(),
        )
        last = self.state.step >= self.schedule.total_steps
        full = last or bool(cfg.ch_every and epoch % cfg.ch_every == 0)
        if full or (cfg.eval_every and epoch % cfg.eval_every == 0):
            with self.times.part("final_eval" if last else "epoch_eval"):
                row.update(evaluator.run(self.model, progress=True, full=full))
                self.gallery_to_tensorboard()
            self.model.train()
            for key, value in row.items():
                if isinstance(value, float) and not math.isfinite(value) and key != "ch_released_swav":
                    log.warning(
                        "validation %s is %s at epoch %d: the model or its heatmaps diverged", key, value, epoch
                    )
            # model_best by validation top-1, as the released scripts kept model_best.pth.tar.
            if self.state.best is None or row["top1"] > self.state.best["top1"]:
                self.state.best = dict(epoch=epoch, step=self.state.step, top1=row["top1"], top5=row["top5"])
                self.save_best()
        self.state.epoch_sums = torch.zeros(4, dtype=torch.float64)
        if self.dist.is_main:
            self.runlog.epoch(row)
        log.info(
            "epoch %d: %s", epoch, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        )
        self.state.last_row = row
        self.save()

    def gallery_to_tensorboard(self) -> None:
        """The evaluation's Grad-CAM gallery as a TensorBoard image (main process; --gallery 0: none),
        drawn with PIL: the matplotlib figure took a second per evaluation, a sixth of the CPU demo."""
        if self.dist.is_main and self.cfg.gallery and self.runlog.writes:
            from semisup.eval.gallery import gallery_grid
            self.runlog.image("gallery", gallery_grid(self.model, self.bundle, self.cfg, self.device), self.state.step)

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
        log.info("batch: labeled %d global / %d per process, unlabeled %s; %d steps per epoch, %d epochs, %d steps",
                 cfg.batch_labeled, self.batch_l,
                 f"{cfg.batch_unlabeled} global / {self.batch_u} per process" if self.uses_unlabeled else "not used",
                 self.schedule.steps_per_epoch, cfg.epochs, self.schedule.total_steps)
        per_process = self.batch_l if self.pair_on_labeled else self.batch_u
        log.info(
            "released replicas: %d replica(s) of %d images; BatchNorm over %s; pair flip protocol %s%s",
            self.geometry.replicas,
            cfg.group_size,
            self.batchnorm_scope(),
            cfg.flip_protocol,
            (
                f"; InfoNCE: {self.negatives_per_anchor(per_process)} negatives per anchor"
                if cfg.cgc_weight > 0 and cfg.consistency == "cgc"
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
                    [self.model], [self.cfg.method], self.bundle, self.cfg, self.device, RunFiles(self.run_dir).gallery
                )
        scheduled = self.schedule.steps_per_epoch * self.cfg.epochs
        result = dict(
            method=self.cfg.method,
            labeled_fraction=self.cfg.labeled_fraction,
            # What the split actually labeled (a --split-file sets it, not --labeled-fraction).
            labeled_images=len(self.bundle.labeled_indices),
            train_images=len(self.bundle.labeled),
            dataset_digest=self.bundle.summary.get("dataset_digest"),  # the dataset's identity, not its folder name
            seed=self.cfg.seed,
            arch=self.cfg.arch,
            pretrained=self.cfg.pretrained,
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


def random_start_warning(cfg: Config) -> str | None:
    """Said first when a limited-label run on a dataset starts from random weights: its recipe's
    learning rates (head 5) are those of fine-tuning a self-supervised trunk."""
    if cfg.pretrained is not None or cfg.is_demo or cfg.full_supervision:
        return None
    return (
        "the trunk starts from random weights, but the limited-label recipe (trunk lr 0.02, head lr 5) fine-tunes a "
        "self-supervised one: pass --pretrained pretrained/swav_800ep_pretrain.pth.tar (`semisup-pretrained "
        "download`); if random weights are meant, this is only a reminder"
    )


def describe_start(cfg: Config, report: dict | None) -> str:
    """Where the trunk's weights came from, said at the start of every run."""
    if report is None:
        warning = random_start_warning(cfg)
        return ("random initialisation (--pretrained none)" if cfg.is_demo else "random initialisation") + (
            f"; WARNING: {warning}" if warning else ""
        )
    manifest = report.get("manifest")
    if manifest:
        return (f"{cfg.pretrained}: {manifest['what']} (sha256 {manifest['sha256'][:12]} verified; made by "
                f"`{manifest['command']}`); --pretrained none trains from scratch")
    return f"{cfg.pretrained} ({report['loaded']} tensors)"


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
            print(format_results(result_rows(cfg, result)))
            print("* best: the epoch of highest validation top-1 (model_best.pt), a selection on the validation set")
            print(next_commands(run.path))
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


def use_threads(cfg: Config, bundle: DataBundle, processes: int | None = None) -> cpus.ThreadChoice:
    """Set this process's torch threads (:mod:`semisup.cpus`): its CPUs less its loader workers."""
    streams = 2 if bundle.unlabeled is not None else 1
    choice = cpus.choose_threads(cfg.threads, cfg.workers * streams, processes)
    torch.set_num_threads(choice.threads)
    return choice


def check_start(cfg: Config, decode_check: bool, world: int = 1) -> tuple[dict, Trainer]:
    """Everything a run does before its first step, writing nothing: the run directory's state
    (finished, held, other settings), the dataset, split and boxes, the model and its pretrained
    trunk; with ``decode_check`` also the labeled and validation images and a sample of the
    unlabeled stream are decoded. Returns the dry-run summary and the (CPU) Trainer. The same
    function runs ``run.py --dry-run`` and the checks ``jobs/submit.py`` makes before queueing."""
    prepare_run_dir(cfg)
    bundle = build_data(cfg, decode_check=decode_check)
    trainer = Trainer(
        cfg, D.Dist(world=world, device=torch.device("cpu")), None, bundle
    )  # the job's geometry, built on the CPU here
    summary = dict(bundle.summary)
    summary["model"] = cfg.arch
    summary["trunk"] = describe_start(cfg, trainer.pretrained_report)
    summary["trunk_tensors_loaded"] = trainer.pretrained_report["loaded"] if trainer.pretrained_report else 0
    summary["steps_per_epoch"] = trainer.schedule.steps_per_epoch
    if cfg.cgc_weight > 0 and cfg.consistency == "cgc":
        per_process = trainer.batch_l if trainer.pair_on_labeled else trainer.batch_u
        summary["negatives_per_anchor"] = trainer.negatives_per_anchor(per_process)
    summary["batchnorm"] = (f"{cfg.bn_geometry}: {trainer.geometry.replicas} replica(s) of {cfg.group_size}; over "
                            f"{trainer.batchnorm_scope()}")
    summary["flip_protocol"] = cfg.flip_protocol
    summary["total_steps"] = trainer.schedule.total_steps
    streams = 2 if bundle.unlabeled is not None else 1
    choice = cpus.choose_threads(cfg.threads, cfg.workers * streams, world if world > 1 else None)
    summary["threads"] = f"{choice.threads} per process ({choice.why})"
    return summary, trainer


def planner_line(cfg: Config, summary: dict) -> str:
    """The planner's estimate of this run (measured H100 rates) on the node the dry run ran on,
    or, without a GPU here, on one H100 with 16 cores."""
    from semisup.train import plan
    if cfg.arch != "resnet50":
        return f"planner: its rates are a ResNet-50's; no estimate for --arch {cfg.arch}"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    node = (gpus, cpus.process_cpus(processes=1)[0]) if gpus else (1, 16)  # the CPUs this job may use
    rates, settings = plan.measured_rates("h100"), cfg.to_dict()
    estimate = plan.plan_run(settings, summary, rates, gpus=node[0], cores=node[1])
    where = f"this node ({node[0]} GPU(s), {node[1]} cores)" if gpus else "1 H100 with 16 cores (no GPU here)"
    hint = ""
    if not cfg.val_cache and estimate["bounded_by"] == "per-epoch top-1 (decode)":
        cached = plan.plan_run({**settings, "val_cache": "x"}, summary, rates, gpus=node[0], cores=node[1])
        hint = f"; --val-cache DIR: about {cached['total_s'] / 60:.1f} min (top-1's crops decoded once)"
    return (
        f"planner: about {estimate['total_s'] / 60:.1f} min on {where} at H100 rates, longest part"
        f" {estimate['bounded_by']}{hint} (semisup-bench plan for other nodes; bench gpu --out measures yours)"
    )


def print_summary(summary: dict) -> None:
    width = max(len(k) for k in summary)
    print("dry run: nothing was trained")
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}")


def next_commands(run_dir: Path) -> str:
    """What to run after a finished run: the table, TensorBoard, the status of its folder."""
    parent = run_dir.parent
    return (
        f"\nrun directory: {run_dir} (metrics.csv, final.json, gallery.png, tensorboard/)\nnext:\n  python"
        f" semisup/report.py {parent}/* --out reports/        # tables over seeds, plots, galleries\n  tensorboard"
        f" --logdir {parent}                              # curves, galleries, hyper-parameters\n  python"
        f" semisup/evaluate.py --checkpoint {run_dir / 'checkpoint.pt'} --metrics iauc,dauc   # insertion /"
        " deletion AUC"
    )


def result_rows(cfg: Config, result: dict) -> list[dict]:
    """The final and the best-epoch rows of a run's result table, each labelled."""
    name = f"{cfg.method} {cfg.labeled_fraction:g}"
    rows = [dict(method=f"{name} final ep{result['final'].get('epoch', '?')}", **result["final"])]
    if result.get("best"):
        rows.append(dict(method=f"{name} best* ep{result['best']['epoch']}", **result["best"]))
    return rows
