"""Predict a run's wall time on a node before queueing it: ``semisup-bench plan``.

The run is split into what bounds each part: training steps are either GPU-bound (forwards and
backward) or decode-bound (JPEGs decoded by the node's cores, or by nvJPEG with
``--decode gpu``); each evaluation is the same race for its own images. Loading overlaps
compute (prefetching workers), so each part takes the larger of the two; parts run one after
another. An evaluation is the sum of the passes its metrics declare (semisup.registry.METRICS:
each metric names its pass and cadence; :func:`_pass_costs` prices every pass), so a metric
that adds a pass to the full evaluations makes the plan count it. Rates are measured: GPU rates
by ``semisup-bench gpu`` on the named card, CPU decode rates per core by ``semisup-bench
loader``; both can be overridden.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from semisup.config import compiles
from semisup.errors import UsageError
from semisup.registry import EVERY_EVAL, FULL_EVAL, METRICS

# Measured rates: ResNet-50, images/s counted as in the benchmark (3 x 128 images per 1 %-recipe
# step; inference at 224 and CH at 448 px), CPU rates per core on realistic ImageNet-like JPEGs.
# GPU: `semisup-bench gpu` on one H100 80GB HBM3 (torch 2.11, bf16 + channels_last +
# torch.compile), results/perf/bench_gpu_h100.json. CPU: the same run's loader benchmark on that
# node's cores (one single-threaded worker each).
MEASURED_GPU = {
    "h100": dict(step_images_per_s=4653, infer_images_per_s=12101, ch_images_per_s=2269,
                 nvjpeg_images_per_s=10041, step_images_per_s_eager=3605),
}
# The 1 % ImageNet split files' sizes and ImageNet's training set: the labeled images a run of
# that fraction trains on, for a plan made before the dataset is scanned.
LABELED_IMAGES = {0.01: 12_811, 0.1: 128_116, 1.0: 1_281_167}
MEASURED_CPU_PER_CORE = dict(labeled_per_s=371, unlabeled_per_s=348, val_per_s=358, ch_val_per_s=336,
                             # --val-cache reads (memory-mapped 224 px crops, page cache): measured on this
                             # project's 2-core VM by bench e2e's loader rates (742 decoded on the same files)
                             val_cached_per_s=145_027)


@dataclass
class RunShape:
    """What a run decodes and computes (defaults: the released 1 % CGC run on ImageNet)."""
    labeled: int = 12_811
    batch_labeled: int = 128
    batch_unlabeled: int = 128
    epochs: int = 50
    val_images: int = 50_000
    eval_every: int = 1
    ch_every: int = 0  # a full evaluation (CH, kNN, CGC loss) every N epochs besides the last
    uses_unlabeled: bool = True
    max_steps: int | None = None
    gallery: int = 16  # --gallery: a grid into TensorBoard at each evaluation, gallery.png at the end
    workers: int | None = None  # loader workers per stream and process (0: decode in the step's process)
    val_cache: bool = False  # --val-cache: top-1 decodes its crops once, then reads them

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.labeled / self.batch_labeled)

    @property
    def steps(self) -> int:
        scheduled = self.epochs * self.steps_per_epoch
        return scheduled if self.max_steps is None else min(scheduled, self.max_steps)

    def full_epochs(self) -> set[int]:
        """Epochs whose evaluation is full: every --ch-every-th and the last the run reaches."""
        last = math.ceil(self.steps / self.steps_per_epoch)
        return {e for e in range(1, last + 1) if e == last or (self.ch_every and e % self.ch_every == 0)}

    @property
    def quick_evals(self) -> int:
        """Evaluations of top-1 alone: the --eval-every epochs that are not full ones."""
        last, full = math.ceil(self.steps / self.steps_per_epoch), self.full_epochs()
        return sum(1 for e in range(1, last + 1) if self.eval_every and e % self.eval_every == 0 and e not in full)

    @property
    def full_evals(self) -> int:
        """Full evaluations: the current model's at each full epoch, and the best checkpoint's at
        the end (counted always; the run skips it when the best epoch is the last)."""
        return len(self.full_epochs()) + 1


def shape_of(settings: dict, summary: dict | None = None) -> RunShape:
    """The shape of a configured run: ``settings`` a config's ``to_dict()``, ``summary`` its
    dry-run summary (image counts of the dataset it names; without it ImageNet's: the split's
    labeled images, 50,000 validation images). Evaluation cadence from --eval-every, --ch-every
    and --max-eval-images; --gallery and --workers as given."""
    fraction = settings["labeled_fraction"]
    summary = summary or dict(
        labeled=LABELED_IMAGES.get(fraction, round(fraction * LABELED_IMAGES[1.0])), validation=50_000,
        unlabeled=0 if fraction >= 1.0 or settings["cgc_weight"] == 0 and settings.get("ce_baseline") == "plain" else 1,
    )
    val = (
        summary["validation"]
        if not settings.get("max_eval_images")
        else min(summary["validation"], settings["max_eval_images"])
    )
    return RunShape(
        labeled=summary["labeled"], batch_labeled=settings["batch_labeled"],
        batch_unlabeled=settings["batch_unlabeled"], epochs=settings["epochs"], val_images=val,
        eval_every=settings["eval_every"], ch_every=settings.get("ch_every") or 0,
        uses_unlabeled=summary["unlabeled"] > 0, max_steps=settings.get("max_steps"),
        gallery=settings.get("gallery", 16), workers=settings.get("workers"), val_cache=bool(settings.get("val_cache")),
    )


def plan_run(settings: dict, summary: dict | None, rates: Rates, gpus: int, cores: int, device: str = "cuda") -> dict:
    """:func:`plan` for a configured run on ``device`` (a planned node's GPU; ``cpu``: bench e2e
    on a CPU): its shape, its decode (``--decode gpu``: nvJPEG) and the step rate of its variant,
    compiled or eager (``--compile`` unset: compiled on CUDA, as the trainer does)."""
    decode = "gpu" if settings.get("decode") == "gpu" else "cpu"
    compiled = compiles(settings.get("compile"), device)
    return plan(shape_of(settings, summary), rates.for_run(compiled), gpus=gpus, cores=cores, decode=decode)


@dataclass
class Rates:
    step_images_per_s: float  # per GPU, counted over the step's 3 forward streams
    infer_images_per_s: float  # per GPU, 224 px forward only
    ch_images_per_s: float  # per GPU, 448 px forward + closed-form Grad-CAM
    labeled_per_s: float  # per core: decode + random crop
    unlabeled_per_s: float  # per core: decode + view + augmented view
    val_per_s: float  # per core: decode + resize + centre crop
    ch_val_per_s: float  # per core: decode + resize to 448
    nvjpeg_images_per_s: float | None = None  # per GPU, with --decode gpu
    step_images_per_s_eager: float | None = None  # per GPU, without torch.compile (step_images_per_s: compiled)
    gallery_grid_s: float | None = None  # seconds of one evaluation's TensorBoard grid (16 images); None: not counted
    gallery_png_s: float | None = None  # seconds of the end of run's gallery.png (16 images); None: not counted
    val_cached_per_s: float | None = None  # per core: a cached top-1 crop read (--val-cache); None: decoded rate

    compiled: bool = False  # step_images_per_s is a compiled step's (for_run sets it)

    def __post_init__(self):
        """A rate is a positive finite number (seconds for the two gallery times; None: not measured):
        a zero or negative one made a plan a traceback or a negative time."""
        for item in fields(self):
            value = getattr(self, item.name)
            name = item.name
            if name == "compiled" or (value is None and item.default is None):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"rate {name} must be a positive number, got {value!r}")

    def for_run(self, compiled: bool) -> "Rates":
        """The rates of a run that does (not) compile its step: the eager step rate where it was measured."""
        if compiled:
            return Rates(**{**asdict(self), "compiled": True})
        if self.step_images_per_s_eager is None:
            return self
        return Rates(**{**asdict(self), "step_images_per_s": self.step_images_per_s_eager, "compiled": False})


def measured_rates(gpu: str) -> Rates:
    """The rates measured for ``gpu`` (a key of MEASURED_GPU) and this project's CPU cores."""
    if gpu not in MEASURED_GPU or any(v is None for v in MEASURED_GPU[gpu].values()):
        raise UsageError(f"no measured rates for GPU kind {gpu!r} (measured: "
                         f"{[k for k, v in MEASURED_GPU.items() if None not in v.values()]}); run `semisup-bench gpu "
                         "--out rates.json` on that node and pass --rates rates.json")
    if any(v is None for v in MEASURED_CPU_PER_CORE.values()):
        raise UsageError("no measured CPU decode rates: run `semisup-bench gpu --out rates.json` on the node")
    return Rates(**MEASURED_GPU[gpu], **MEASURED_CPU_PER_CORE)


def plan(shape: RunShape, rates: Rates, gpus: int = 1, cores: int = 16, decode: str = "cpu") -> dict:
    """Predicted seconds per part and in total, and the bounding stage of each part."""
    parts = {"train": (*_train_part(shape, rates, gpus, cores, decode), 0.0), **_eval_parts(shape, rates, gpus, cores)}
    rows = {name: dict(seconds=_takes(c, d, shape.workers) + g, gpu_s=c, decode_s=d, gallery_s=g,
                       bound="GPU" if c >= d else "decode")
            for name, (c, d, g) in parts.items()}
    total = sum(r["seconds"] for r in rows.values())
    longest = max(rows, key=lambda k: rows[k]["seconds"])
    run = dict(asdict(shape), steps=shape.steps, quick_evals=shape.quick_evals, full_evals=shape.full_evals)
    return dict(node=dict(gpus=gpus, cores=cores, decode=decode), run=run, parts=rows, total_s=total,
                total_h=total / 3600, bounded_by=f"{longest} ({rows[longest]['bound']})",
                not_counted=_not_counted(shape, rates))


def _not_counted(shape: RunShape, rates: Rates) -> list[str]:
    """What the plan leaves out, said beside it."""
    missing = []
    if shape.gallery and (rates.gallery_grid_s is None or rates.gallery_png_s is None):
        missing.append("the gallery's drawing (no measured rate: bench e2e measures it)")
    if rates.compiled:
        missing.append("torch.compile's compilation at the first step of each batch shape (two: the full batch "
                       "and the epoch's partial last one; the benchmark's compiled step took 32 s in all on an H100)")
    return missing


def _takes(compute: float, decode: float, workers: int | None) -> float:
    """A part's seconds: loader workers decode while the step computes (the larger of the two);
    without workers (``--workers 0``) the step's own process decodes first (their sum)."""
    return compute + decode if workers == 0 else max(compute, decode)


def _loader_cores(cores: int, gpus: int, workers: int | None, streams: int) -> int:
    """Cores decoding: the node's, less one per GPU process, and no more than the run's workers."""
    free = max(1, cores - gpus)  # one core per GPU process drives it
    if workers is None:
        return free
    return min(free, gpus) if workers == 0 else max(1, min(free, workers * streams * gpus))  # 0: each process


def _train_part(shape: RunShape, rates: Rates, gpus: int, cores: int, decode: str) -> tuple[float, float]:
    """(compute, decode) seconds of the training steps."""
    images_per_step = shape.batch_labeled + (2 if shape.uses_unlabeled else 0) * shape.batch_unlabeled
    compute = shape.steps * images_per_step / (rates.step_images_per_s * gpus)
    if decode == "gpu" and rates.nvjpeg_images_per_s:
        decoded = shape.steps * (shape.batch_labeled + (shape.batch_unlabeled if shape.uses_unlabeled else 0))
        return compute + decoded / (rates.nvjpeg_images_per_s * gpus), 0.0  # nvJPEG shares the GPU with the step
    per_step = shape.batch_labeled / rates.labeled_per_s + (
        shape.batch_unlabeled / rates.unlabeled_per_s if shape.uses_unlabeled else 0)
    return compute, shape.steps * per_step / _loader_cores(cores, gpus, shape.workers, 1 + shape.uses_unlabeled)


def _eval_parts(shape: RunShape, rates: Rates, gpus: int, cores: int) -> dict[str, tuple[float, float, float]]:
    """(compute, decode, gallery) seconds of the quick (top-1) and the full evaluations, each the
    sum of the passes its metrics declare (semisup.registry.METRICS). Every evaluation of the
    current model then draws the TensorBoard gallery grid, the run's end gallery.png: on the main
    process, after the evaluation's loaders are done (added, not overlapped)."""
    loader_cores = _loader_cores(cores, gpus, shape.workers, 1 + shape.uses_unlabeled)  # as the Evaluator takes
    grid = (rates.gallery_grid_s or 0.0) if shape.gallery else 0.0
    png = (rates.gallery_png_s or 0.0) if shape.gallery else 0.0
    costs = _pass_costs(shape, rates)
    quick = METRICS.passes(METRICS.choices((EVERY_EVAL,)))
    full = [p for p in METRICS.passes(METRICS.choices((EVERY_EVAL, FULL_EVAL))) if p not in quick]

    def part(passes, count: int) -> tuple[float, float]:
        return (count * sum(costs[p.name][0] for p in passes) / gpus,
                count * sum(costs[p.name][1] for p in passes) / loader_cores)

    full_gallery = (shape.full_evals - 1) * grid + png  # the best checkpoint's evaluation draws none
    # A full evaluation runs the quick one's passes too (top-1 is part of it).
    full_cost = [a + b for a, b in zip(part(quick, shape.full_evals), part(full, shape.full_evals))]
    quick_gallery = shape.quick_evals * grid
    return {f"per-epoch {', '.join(p.title for p in quick)}": (*part(quick, shape.quick_evals), quick_gallery),
            f"final {', '.join(p.title for p in full)}": (*full_cost, full_gallery)}


def _pass_costs(shape: RunShape, rates: Rates) -> dict[str, tuple[float, float]]:
    """{pass: (seconds on one GPU, seconds of decode on one core)} of one evaluation, for every
    pass of semisup.registry.PASSES."""
    val, labeled = shape.val_images, shape.labeled
    # With --val-cache the first evaluation decodes (and writes) the crops; every later top-1 reads them.
    top1_rate = rates.val_cached_per_s if shape.val_cache and rates.val_cached_per_s else rates.val_per_s
    evaluations = shape.quick_evals + shape.full_evals
    top1_decode = (val / rates.val_per_s + (evaluations - 1) * val / top1_rate) / evaluations
    return {
        "top-1": (val / rates.infer_images_per_s, top1_decode),
        "ch": (val / rates.ch_images_per_s, val / rates.ch_val_per_s),  # at 448 px, decoded at that size
        "knn": (labeled / rates.infer_images_per_s, labeled / rates.val_per_s),  # the labeled bank
        "cgc-loss": (val / rates.infer_images_per_s, 0.0),  # the augmented views of top-1's crops: no decode
        "consistency": (5 * val / rates.ch_images_per_s, 0.0),  # a view and 4 transforms, each with its heatmap
        "insertion": (insertion_seconds(val, rates), val / rates.val_per_s),
    }


def insertion_seconds(val_images: int, rates: Rates, gpus: int = 1, steps: int = 29) -> float:
    """``evaluate.py --metrics iauc,dauc`` on ``val_images``: the saliency pass at 224 and, per
    metric, ``steps`` scored copies of every image (forwards at the top-1 rate); after a run,
    not part of it."""
    return val_images * (1 + 2 * steps) / (rates.infer_images_per_s * gpus)


def format_plan(result: dict) -> str:
    node = result["node"]
    lines = [f"node: {node['gpus']} GPU(s), {node['cores']} cores, decode on {node['decode']}"]
    lines.append(f"{'part':<26}{'GPU':>10}{'decode':>10}{'takes':>10}  bound by")
    for name, r in result["parts"].items():
        lines.append(
            f"{name:<26}{r['gpu_s'] / 60:>9.1f}m{r['decode_s'] / 60:>9.1f}m{r['seconds'] / 60:>9.1f}m  {r['bound']}"
        )
    lines.append(
        f"{'total':<46}{result['total_s'] / 60:>9.1f}m  ({result['total_h']:.2f} h); longest part:"
        f" {result['bounded_by']}"
    )
    lines += [f"not counted: {what}" for what in result.get("not_counted", [])]
    return "\n".join(lines)
