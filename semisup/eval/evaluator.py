"""Evaluation: top-1/top-5, Content Heatmap (CH), validation CGC loss, kNN top-1, insertion AUC.

The command line is ``semisup/evaluate.py``; training calls :class:`Evaluator` each epoch.

Content Heatmap, as the released TorchRay scripts compute it: Grad-CAM of the ground-truth
class at the last conv block (eval mode), on the image resized so its shorter side is
``ch_short_side``, without cropping; the map is normalised to sum 1 plus 1e-8 per cell, resized
to the original image size and normalised again, and CH is its mass inside the union of that
class's boxes. An all-zero Grad-CAM thus becomes uniform and scores the boxes' area fraction
(``ch``, the published protocol); ``ch_strict`` counts it as 0 and ``ch_zero`` counts them.
``ch_released_swav`` is what the released script for the SwAV-start (1 %) models computes: its
model has no classification head, so the "Grad-CAM of class c" is layer4's feature channel c.
"""
from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from semisup import distributed as D
from semisup.data import transforms as T
from semisup.data import valcache
from semisup.data.boxes import content_heatmap  # noqa: F401 (also part of this module's API)
from semisup.data.datasets import EvalDataset, leave_stop_signals_to_the_main_process
from semisup.eval.heatmap_metrics import scores as heatmap_scores
from semisup.eval.insertion import InsertionSettings
from semisup.eval.settings import eval_settings
from semisup.method import cgc, explainers
from semisup.registry import EVERY_EVAL, FULL_EVAL, HEATMAP_METRICS, METRICS

log = logging.getLogger(__name__)

VAL_CGC_BATCH = 128  # fixed, so the InfoNCE value is comparable between checkpoints


def metric_choices() -> list[str]:
    """What --metrics names (semisup.registry.METRICS's choices): top1, ch, cgc-loss, knn, iauc,
    dauc for the package's metrics."""
    return METRICS.choices()


def full_metrics() -> set[str]:
    """The --metrics names of a run's full evaluation (every --ch-every epoch, the last, the best
    checkpoint) and of semisup/evaluate.py's default: top1, ch, cgc-loss, knn for the package's."""
    return set(METRICS.choices((EVERY_EVAL, FULL_EVAL)))


def quick_metrics() -> set[str]:
    """The --metrics names of each --eval-every epoch's evaluation (top1)."""
    return set(METRICS.choices((EVERY_EVAL,)))


def released_swav_cams(features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor | None:
    """What ``evaluate_swav_imagenet_gradcam_energy_inside_bbox.py`` explains: its SwAV ResNet is
    built without a head (output_dim=0), so "logit" c is pooled feature channel c and its
    pooled-gradient Grad-CAM is relu(A_c), the c-th channel of layer4. [B, C, h, w] -> [B, h, w],
    or None when a class index exceeds the channels (the script would fail)."""
    if int(classes.max()) >= features.shape[1]:
        return None
    return features.float()[torch.arange(len(classes), device=features.device), classes].clamp_min(0)


def size_grouped_batches(sizes: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Batches of indices whose images share one original size: the network then sees equal
    input sizes and every result equals the one-image-at-a-time computation."""
    groups = defaultdict(list)
    for i, s in enumerate(sizes):
        groups[tuple(s)].append(i)
    return [idx[j:j + batch_size] for _, idx in sorted(groups.items()) for j in range(0, len(idx), batch_size)]


class Evaluator:
    """Runs the evaluation passes of one model on a DataBundle's validation (and labeled) data."""

    def __init__(self, settings, bundle, device: torch.device, dist: D.Dist | None = None, batch_size: int = 64):
        """``settings``: the evaluation's (:class:`EvalSettings`), or a Config they are read from."""
        self.settings, self.bundle, self.device = eval_settings(settings), bundle, device
        self.dist = dist or D.Dist(device=device)
        self.batch_size = batch_size
        self.explainer = explainers.get(self.settings.explainer)  # the run's heatmap method, for CH and the CGC loss
        self.amp_dtype = D.amp_dtype(self.settings, device)  # bf16/fp16 forwards on GPUs, as in training
        n = len(bundle.val.source)
        limit = self.settings.max_eval_images or n
        self.indices = np.arange(min(n, limit))
        self._val_cache = None  # top1_dataset's, opened or built once

    def _loader(self, dataset, batch_sampler=None):
        # The training streams' workers wait while the model is evaluated: the evaluation takes
        # as many (--workers per stream, 2 streams with unlabeled images), the cores the run has
        # for loading; with --workers alone it was decode-bound at half of them (bench plan).
        workers = self.settings.workers * (2 if self.bundle.unlabeled is not None else 1)
        kwargs = dict(batch_sampler=batch_sampler) if batch_sampler is not None else dict(batch_size=self.batch_size)
        return DataLoader(dataset, num_workers=workers, pin_memory=self.device.type == "cuda",
                          worker_init_fn=leave_stop_signals_to_the_main_process, **kwargs)

    def top1_dataset(self):
        """The validation crops top-1 reads: decoded each time, or (--val-cache) read from the
        cache, which the main process builds the first time; where it cannot be written or read
        (a full disk, a folder other nodes do not see), decoded, with a warning."""
        dataset = EvalDataset(self.bundle.val.source, self.settings.resize_size, self.settings.image_size, self.indices)
        if not self.settings.val_cache:
            return dataset
        if self._val_cache is None:
            folder = Path(self.settings.val_cache)
            cached = valcache.open_cache(folder, dataset)
            if cached is None and self.dist.is_main:
                positions = list(range(len(dataset)))
                batches = [positions[i:i + self.batch_size] for i in range(0, len(positions), self.batch_size)]
                try:
                    cached = valcache.build_cache(folder, dataset, self._loader(dataset, batches))
                except OSError as err:
                    log.warning("--val-cache %s: cannot write the cache (%s); decoding instead", folder, err)
            D.barrier()
            self._val_cache = cached or valcache.open_cache(folder, dataset) or dataset
            if self._val_cache is dataset and not self.dist.is_main:
                log.warning("--val-cache %s: no cache this process can read; decoding instead", folder)
        return self._val_cache

    def _shard(self, items: list) -> list:
        return items[self.dist.rank::self.dist.world]

    def run(self, model, progress: bool = True, full: bool = True, metrics: set[str] | None = None,
            insertion: "InsertionSettings | None" = None) -> dict:
        """Returns dict of top1, top5 (percent), bad_val_images, eval_seconds and, with ``full``
        (or as ``metrics`` names them, :func:`metric_choices`), cgc_val_loss; ch, ch_strict,
        ch_released_swav (percent), ch_zero (count), ch_images, the heatmap metrics; knn_top1
        (percent); iauc, dauc (percent, ``semisup.eval.insertion`` with ``insertion`` settings, the
        released ones by default). The passes run are those the asked metrics declare."""
        metrics = set(metrics) if metrics is not None else (full_metrics() if full else quick_metrics())
        passes = {p.name for p in METRICS.passes(metrics)}
        model.eval()
        start = time.time()
        # Inference mode where the heatmaps need no autograd (closed forms); else gradients stay possible.
        grad_free = not self.explainer.needs_autograd(_unwrap(model))
        with torch.inference_mode() if grad_free else torch.no_grad():
            # The top-1 pass always runs: the kNN and CGC-loss passes ride on its forwards.
            results = self.classify(model, progress, features="knn" in passes, cgc="cgc-loss" in passes)
            features, labels = results.pop("_features"), results.pop("_labels")
            if "ch" in passes:
                with D.no_cudnn_autotune():
                    results.update(self.content_heatmap(model, progress))
                # Read in the top-1 pass but not the image its annotation describes: unreadable for CH.
                results["bad_val_images"] += results.pop("_size_mismatch", 0)
            if "knn" in passes:
                results["knn_top1"] = self.knn(model, features, labels, progress)
            if "consistency" in passes:
                results.update(self.consistency(model, progress))
        if "insertion" in passes:
            results.update(
                self.insertion(
                    model,
                    insertion or InsertionSettings(size=self.settings.image_size, explainer=self.settings.explainer),
                    metrics, progress,
                )
            )
            model.eval()
        results["eval_seconds"] = round(time.time() - start, 1)
        return results

    def insertion(self, model, settings: "InsertionSettings", metrics: set[str], progress: bool) -> dict:
        """Insertion / deletion AUC of the validation images (or the first --max-eval-images), in
        file order, as released (``semisup.eval.insertion``); one process."""
        from semisup.eval.insertion import CAM_BATCH, InsertionDataset, insertion_metrics
        dataset = InsertionDataset(self.bundle.val.source, self.indices, settings.size)
        loader = DataLoader(dataset, batch_size=CAM_BATCH, shuffle=False, num_workers=self.settings.workers,
                            worker_init_fn=leave_stop_signals_to_the_main_process)
        batches = tqdm(loader, desc="eval insertion/deletion", disable=not self._bars(progress), leave=False)
        return insertion_metrics(model, batches, settings, self.device,
                                 metrics=tuple(METRICS.of_pass("insertion", choices=metrics)))

    def _bars(self, progress: bool) -> bool:
        """Progress bars on the main process, and only where a person watches a terminal (a Slurm
        log gets the step lines instead)."""
        return progress and self.dist.is_main and sys.stderr.isatty()

    def _autocast(self):
        return D.autocast(self.device, self.amp_dtype)

    def classify(self, model, progress: bool, features: bool = True, cgc: bool = True) -> dict:
        """Top-1/top-5 on Resize + CenterCrop; with ``features`` also the pooled features for kNN,
        with ``cgc`` the validation CGC loss."""
        full = features or cgc
        dataset = self.top1_dataset()
        batches = self._shard(
            [list(range(i, min(i + VAL_CGC_BATCH, len(dataset)))) for i in range(0, len(dataset), VAL_CGC_BATCH)]
        )
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)  # correct1, correct5, n, loss*n, n_loss, bad
        feats, labels = [], []
        for batch in tqdm(
            self._loader(dataset, batches), desc="eval top-1/top-5", disable=not self._bars(progress), leave=False
        ):
            images = batch["image"].to(self.device, non_blocking=True)
            target = batch["label"].to(self.device)
            with self._autocast():
                normalised = T.normalize(images, channels_last=self._channels_last())
                logits, features = model(normalised)
            logits = logits.float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            sums[0] += (top5[:, 0] == target).sum()
            sums[1] += (top5 == target[:, None]).any(1).sum()
            sums[2] += len(target)
            sums[5] += batch["bad"].sum().to(self.device)
            if not full:
                continue
            feats.append(F.normalize(features.float().mean((2, 3)), dim=1))
            labels.append(target)
            if cgc and len(target) > 1:
                loss = self._cgc_loss(model, images, normalised, logits, features, target, batch["index"])
                sums[3] += loss * len(target)
                sums[4] += len(target)
        D.all_reduce_sum(sums)
        n = max(sums[2].item(), 1)
        out = dict(top1=100 * sums[0].item() / n, top5=100 * sums[1].item() / n, bad_val_images=int(sums[5].item()),
                   _features=torch.cat(feats) if feats else None, _labels=torch.cat(labels) if labels else None)
        if cgc:  # undefined (None), not a perfect 0, where no batch held two images to contrast
            out["cgc_val_loss"] = sums[3].item() / sums[4].item() if sums[4].item() else None
        return out

    def consistency(self, model, progress: bool) -> dict:
        """Explanation consistency under the training transforms (``semisup.eval.consistency``):
        mean Pearson r and top-15 % IoU (percent) over the top-1 views and their DRAWS transforms,
        with how many (image, draw) pairs each is over (r: those where neither map is constant)."""
        from semisup.eval.consistency import BATCH, consistency_scores
        raw = _unwrap(model)

        def explain(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            normalised = T.normalize(images.to(self.device), channels_last=self._channels_last())
            with self._autocast():
                logits, features = model(normalised)
            return self.explain(raw, normalised, logits, features, classes.to(self.device))

        dataset = self.top1_dataset()
        batches = self._shard([list(range(i, min(i + BATCH, len(dataset)))) for i in range(0, len(dataset), BATCH)])
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # r sum, r count, IoU sum, IoU count
        scale = (self.settings.crop_scale_min, 1.0)
        for batch in tqdm(self._loader(dataset, batches), desc="eval consistency", disable=not self._bars(progress),
                          leave=False):
            r, iou = consistency_scores(batch["image"].to(self.device), batch["label"], batch["index"].tolist(),
                                        explain, scale)
            defined = ~torch.isnan(r)
            sums += torch.stack([r[defined].sum(), defined.sum().double(), iou.sum(), torch.tensor(float(len(iou)))
                                 ]).to(sums)
        D.all_reduce_sum(sums)
        return dict(consistency_r=sums[0].item() / sums[1].item() if sums[1].item() else None,
                    consistency_iou=100 * sums[2].item() / sums[3].item() if sums[3].item() else None,
                    consistency_pairs=int(sums[1].item()))

    def explain(self, model, images, logits, features, classes) -> torch.Tensor:
        """[B, h, w] heatmaps of ``classes`` by the run's explainer (``images``: the normalised input)."""
        return self.explainer(explainers.ExplainRequest(model, images, logits, features, classes))

    def _channels_last(self) -> bool:
        return D.uses_channels_last(self.settings, self.device)

    def _cgc_loss(self, model, images, normalised, logits, features, target, index) -> torch.Tensor:
        """Validation CGC loss with transforms seeded by image index (the same for every
        checkpoint), ground-truth class, per batch of VAL_CGC_BATCH images in file order
        (``images`` uint8, ``normalised`` the model's input of them)."""
        raw = _unwrap(model)
        augs, boxes, flips = [], [], []
        for image, i in zip(images.cpu(), index.tolist()):
            seeded = torch.Generator().manual_seed(int(i))
            aug, box, flip = T.cgc_pair(image, (self.settings.crop_scale_min, 1.0), seeded)
            augs.append(aug), boxes.append(box), flips.append(flip)
        aug_images = T.normalize(torch.stack(augs).to(self.device), channels_last=self._channels_last())
        with self._autocast():
            aug_logits, aug_features = model(aug_images)
        cam = self.explain(raw, normalised, logits, features, target)
        cam_aug = self.explain(raw, aug_images, aug_logits, aug_features, target)
        return cgc.cgc_loss(
            cam_aug, cam, torch.stack(boxes), torch.stack(flips), self.settings.temperature, self.settings.cam_size,
            self.settings.group_size, self.settings.cgc_negatives,
        )

    def content_heatmap(self, model, progress: bool, released_swav: bool = True) -> dict:
        """CH (published protocol), strict CH, the count of all-zero heatmaps and (with
        ``released_swav``) the released SwAV script's CH, in one pass (percent; NaN where
        undefined, e.g. no boxes). Heatmaps are resized and masked on the model's device."""
        val = self.bundle.val
        nan = float("nan")
        undefined = dict(
            ch=None, ch_strict=None, ch_released_swav=None, ch_zero=0, ch_images=0,
            **{name: None for name, _ in HEATMAP_METRICS.items()},
        )  # no boxes: CH is undefined, not 0
        if val.boxes is None:
            return undefined
        raw = _unwrap(model)
        indices = [i for i in self.indices if val.boxes[i] is not None]  # CH is defined where boxes exist
        dataset = EvalDataset(val.source, self.settings.ch_short_side, None, indices, sizes=val.sizes)
        sizes = [val.sizes[i] for i in indices]
        batches = self._shard(size_grouped_batches(sizes, self.batch_size))
        sums = torch.zeros(
            6, dtype=torch.float64
        )  # ch, ch strict, zero count, images, ch released-swav (nan if undefined), size mismatches
        registered = {name: torch.zeros((), dtype=torch.float64) for name, _ in HEATMAP_METRICS.items()}
        for batch in tqdm(
            self._loader(dataset, batches), desc="eval Content Heatmap", disable=not self._bars(progress), leave=False
        ):
            images = batch["image"].to(self.device, non_blocking=True)
            target = batch["label"].to(self.device)
            normalised = T.normalize(images, channels_last=self._channels_last())
            logits, features = model(normalised)
            index = batch["index"].tolist()
            boxes, size = [val.boxes[i] for i in index], val.sizes[index[0]]
            cams = self.explain(raw, normalised, logits, features, target)
            ch, strict, zero = content_heatmap(cams, boxes, size)  # Grad-CAM: = pooled (tested)
            for name, values in heatmap_scores(cams, boxes, size).items():
                registered[name] += values.sum().cpu()
            swav = released_swav_cams(features, target) if released_swav else None
            swav_sum = (
                content_heatmap(swav, boxes, size)[0].sum().cpu()
                if swav is not None
                else torch.tensor(nan, dtype=torch.float64)
            )
            sums += torch.stack([ch.sum().cpu(), strict.sum().cpu(), zero.sum().double().cpu(),
                                 torch.tensor(float(len(index)), dtype=torch.float64), swav_sum,
                                 batch["mismatch"].sum().double()])
        sums = D.all_reduce_sum(sums.to(self.device)).cpu()
        registered = {k: D.all_reduce_sum(v.to(self.device)).cpu() for k, v in registered.items()}
        if sums[3].item() == 0:
            log.warning("no evaluated image has a box of its class: Content Heatmap is undefined (check --val-boxes)")
            return dict(undefined, _size_mismatch=int(sums[5].item()))
        images = sums[3].item()
        return dict(
            ch=100 * sums[0].item() / images, ch_strict=100 * sums[1].item() / images,
            ch_released_swav=100 * sums[4].item() / images, ch_zero=int(sums[2].item()), ch_images=int(sums[3].item()),
            _size_mismatch=int(sums[5].item()),
            **{name: 100 * total.item() / images for name, total in registered.items()},
        )

    def knn(self, model, val_features: torch.Tensor, val_labels: torch.Tensor, progress: bool) -> float:
        """kNN top-1 (percent) of pooled backbone features, the labeled subset as memory bank."""
        from semisup.eval.knn import knn_classify
        bundle = self.bundle
        bank_indices = (
            bundle.labeled_indices[: self.settings.max_eval_images]
            if self.settings.max_eval_images
            else bundle.labeled_indices
        )
        dataset = EvalDataset(bundle.labeled, self.settings.resize_size, self.settings.image_size, bank_indices)
        positions = self._shard(list(range(len(dataset))))
        bank, bank_labels = [], []
        batches = [positions[i:i + self.batch_size] for i in range(0, len(positions), self.batch_size)]
        for batch in tqdm(
            self._loader(dataset, batches), desc="eval kNN bank", disable=not self._bars(progress), leave=False
        ):
            with self._autocast():
                _, features = model(T.normalize(batch["image"].to(self.device), channels_last=self._channels_last()))
            bank.append(F.normalize(features.float().mean((2, 3)), dim=1))
            bank_labels.append(batch["label"].to(self.device))
        width = _unwrap(model).fc.in_features
        # Processes may hold no rows of a small set: gather_rows takes empty tensors.
        bank = D.gather_rows(torch.cat(bank) if bank else torch.zeros(0, width, device=self.device)).cpu()
        bank_labels = D.gather_rows(
            torch.cat(bank_labels) if bank_labels else torch.zeros(0, dtype=torch.long, device=self.device)
        ).cpu()
        correct = torch.zeros(2, dtype=torch.float64, device=self.device)
        if val_features is not None:
            predictions = knn_classify(
                bank, bank_labels, val_features.cpu(), k=self.settings.knn_k, temperature=self.settings.knn_temperature,
                num_classes=len(bundle.classes), device=self.device,
            )
            correct += torch.tensor(
                [(predictions == val_labels.cpu()).sum().item(), len(val_labels)], dtype=torch.float64,
                device=self.device,
            )
        D.all_reduce_sum(correct)
        return 100 * correct[0].item() / max(correct[1].item(), 1)


def _unwrap(model):
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def _cell(value, width: int, digits: int) -> str:
    """A number, or '–' where a metric was not computed; a non-finite value stays visible as such."""
    if value is None:
        return f"{'–':>{width}}"
    if not np.isfinite(value):
        return f"{'non-finite':>{width}}"
    return f"{value:>{width}.{digits}f}"


def format_results(rows: list[dict], hidden: dict[str, str] | None = None) -> str:
    """A small fixed-width table: method and each metric that declares a ``console`` column
    (top-1, top-5, CH published, strict and released SwAV script, CGC loss, kNN; IAUC and DAUC
    where a row has them). Columns in ``hidden`` (name: why it means nothing for this run, see
    ``metrics.not_meaningful``) and columns no row has a number for are left out, with a line
    saying which and why."""
    hidden = dict(hidden or {})
    empty = [m for m in METRICS.in_order() if m.console and m.name not in hidden and not m.optional
             and all(r.get(m.name) is None for r in rows)]
    columns = [(m.console, m.name, m.width, m.decimals) for m in METRICS.in_order()
               if m.console and m.name not in hidden and m not in empty
               and (not m.optional or any(m.name in r for r in rows))]
    name_width = max([26] + [len(str(r["method"])) + 2 for r in rows])  # names are never cut
    header = f"{'method':<{name_width}}" + "".join(f"{title:>{width}}" for title, _, width, _ in columns)
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['method']:<{name_width}}"
            + "".join(_cell(r.get(key), width, digits) for _, key, width, digits in columns)
        )
    why = [reason for name, reason in hidden.items() if name in METRICS and METRICS.get(name).console]
    if empty:
        # The CH pass ran (its image count is there) and found no box: say so, not for CH left unasked.
        boxes = all("ch_images" in r and not r["ch_images"] for r in rows) and any(
            m.evaluation_pass == "ch" for m in empty)
        why.append(f"{', '.join(m.console for m in empty)}: not computed"
                   + (" (no validation image has a box of its class: --val-boxes)" if boxes else ""))
    if why:
        lines.append("not shown: " + "; ".join(why))
    return "\n".join(lines)
