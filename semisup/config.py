"""The one source of truth for run settings: a typed dataclass, its command line, YAML files.

Precedence, lowest first: dataclass defaults (the published 1% ImageNet CGC recipe), the demo
preset when no ``--data`` is given, ``--config FILE.yaml``, explicit flags. The resolved
config is saved as ``config.yaml`` in the run directory and inside every checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from semisup import launchenv, registry
from semisup.errors import Parser, UsageError

# The checkout (or snapshot) holding this package: recipes, splits/ and pretrained/ sit in it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _f(default, help: str, flags: tuple[str, ...] = (), choices=None, cli: bool = True, path: bool = False):
    """A setting: its help, extra flag spellings, allowed values, whether it is a command-line flag,
    and whether it names a file or folder (``path``: made absolute for a job that runs elsewhere)."""
    return field(default=default, metadata=dict(help=help, flags=flags, choices=choices, cli=cli, path=path))


@dataclass
class Config:
    # --- data ---
    data: str | None = _f(
        None, "ImageNet-style root with train/ and val/ class folders; omit to use the embedded demo dataset", path=True
    )
    labeled_fraction: float = _f(
        0.01,
        "fraction of train/ that is labeled: 0.01 and 0.1 use the standard SimCLR split files in splits/, 1.0 is full"
        " supervision (CGC on the labeled images with the true class)",
    )
    split_file: str | None = _f(
        None, "labeled subset as a file of train file names (overrides --labeled-fraction's lookup)", path=True
    )
    splits_dir: str | None = _f(None, "folder of split files (default: the project's splits/)", path=True)
    split_seed: int = _f(
        0,
        "seed of the stratified subset built for fractions other than 0.01 / 0.1 (kept fixed across --seed, like the"
        " standard files)",
    )
    unlabeled: str = _f(
        "all", "unlabeled stream: 'all' training images (published run) or the 'rest' not in the labeled split",
        choices=("all", "rest"),
    )
    val_boxes: str | None = _f(
        None, "bounding boxes for Content Heatmap: a folder of ImageNet val XML files, CUB's bounding_boxes.txt, or a "
        "plugin's format (semisup.registry.BOX_FORMATS: the reader that recognises the path reads it)",
        path=True,
    )
    val_labels: str | None = _f(None, "for a flat val/ folder: a file of '<file name> <wnid>' lines", path=True)
    val_dir: str = _f("val", "validation folder under --data (CUB-200 as released: 'test')")
    data_format: str = _f(
        "imagefolder",
        "layout of --data: 'imagefolder' (train/<class>/, <val-dir>/) or 'fgvc-aircraft' (the "
        "FGVC-Aircraft 2013b archive as torchvision's FGVCAircraft reads it: trainval for training, test for "
        "validation, the 100 variants), or a plugin's (semisup.registry.DATA_FORMATS)",
    )
    num_classes: int | None = _f(None, "number of classes (default: the number of class folders)")
    image_size: int = _f(224, "training crop size and the size of the unlabeled view")
    resize_size: int = _f(256, "shorter side before the center crop for the unlabeled view and top-1/top-5")
    ch_short_side: int = _f(448, "Content Heatmap: images are resized so their shorter side is this, without cropping")
    crop_scale_min: float = _f(
        0.08, "lower bound of RandomResizedCrop's area scale (labeled crops and the CGC transform)"
    )
    max_bad_fraction: float = _f(0.001, "stop the run if more than this fraction of decoded images are unreadable")
    workers: int = _f(8, "data loading worker processes per stream and process")
    threads: int | None = _f(
        None, "torch CPU threads of each training process (default: the CPUs it may use, from its affinity mask, "
        "SLURM_CPUS_PER_TASK and a cgroup quota, shared among the node's processes, less its loader workers; "
        "OMP_NUM_THREADS, where set, wins)"
    )
    plugins: str | None = _f(
        None,
        "comma-separated Python modules that register explainers, metrics, data formats or box formats "
        "(semisup/registry.py; their folder on PYTHONPATH); SEMISUP_PLUGINS and 'semisup.plugins' entry points too",
    )
    decode: str = _f(
        "cpu",
        "where training JPEGs are decoded: 'cpu' (loader workers, the full image as PIL decodes it, by "
        "libjpeg-turbo), 'cpu-draft' (as cpu, but files at least twice the view are decoded at 1/2-1/8 scale by "
        "libjpeg's DCT scaling for the unlabeled view: faster, pixels differ from the released full decode: "
        "docs/performance.md) or 'gpu' (workers only read bytes and draw crops; nvJPEG decodes and the GPU "
        "crops; for nodes with few cores per GPU)",
        choices=("cpu", "cpu-draft", "gpu"),
    )
    demo_cache: str | None = _f(None, "where the embedded demo dataset is cached (default ~/.cache/semisup)", path=True)
    # --- model ---
    arch: str = _f("resnet50", "torchvision ResNet name (resnet18/34/50/101/152), resnet_tiny (demo), or "
                   "timm/<name>: any timm model with a [B, C, h, w] last stage (timm/resnet50, "
                   "timm/convnext_tiny; needs pip install timm), or a plugin's (semisup.registry.BACKBONES)")
    pretrained: str | None = _f(
        None,
        "SwAV/DeepCluster-v2, torchvision or own checkpoint for the trunk (the head starts fresh); "
        "'none': random initialisation",
        path=True,
    )
    # --- optimisation (defaults: the published 1% CGC recipe) ---
    batch_labeled: int = _f(128, "global labeled batch (split evenly across processes)")
    batch_unlabeled: int = _f(128, "global unlabeled batch (split evenly across processes)")
    epochs: int = _f(
        50,
        "epochs; an epoch is one pass over the labeled set, its last batch partial (12,811 images at 128: 101 steps)",
    )
    max_steps: int | None = _f(None, "stop after this many optimizer steps (quick checks; the schedule is unchanged)")
    lr_trunk: float = _f(0.02, "learning rate of the pretrained trunk")
    lr_head: float = _f(5.0, "learning rate of the fresh linear head (large, as in SwAV's semi-supervised recipe)")
    lr_milestones: list[float] = _f(
        (12, 16), "epochs after which the learning rates are multiplied by --lr-gamma (fractions allowed, e.g. 0.7)"
    )
    lr_gamma: float = _f(0.2, "learning-rate decay factor at each milestone")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(0.0, "weight decay (SGD's, or AdamW's decoupled one)")
    optimizer: str = _f("sgd", "sgd (the released runs': --momentum, --weight-decay) or adamw (a ViT's)",
                        choices=("sgd", "adamw"))
    lr_warmup_epochs: float = _f(
        0.0, "epochs over which the learning rates rise linearly from 0 to theirs (a ViT from scratch needs some)")
    # --- method ---
    cgc_weight: float = _f(
        0.25, "weight lambda of the consistency loss; 0 gives plain cross-entropy fine-tuning", flags=("--lambda",)
    )
    temperature: float = _f(0.5, "InfoNCE temperature of the CGC loss")
    consistency: str = _f(
        "cgc", "'cgc' (contrastive, InfoNCE) or 'l2' (the earlier GCC baseline, no negatives)", choices=("cgc", "l2")
    )
    group_size: int = _f(
        64,
        "InfoNCE negatives of an anchor are the other images of its group: the global batch in contiguous "
        "groups of this many (64 = one DataParallel replica of the released 2-GPU run: 63 negatives), the same "
        "for any number of GPUs; on GPUs BatchNorm also normalises over groups of this many where whole processes "
        "make up a group (FIDELITY.md)",
    )
    cgc_negatives: str = _f(
        "aug",
        "negatives of the InfoNCE: 'aug' = the other augmented views' heatmaps, anchored at the augmented "
        "view (released code); 'cross' = anchored at the transformed view heatmap (an ablation)",
        choices=("aug", "cross"),
    )
    ce_baseline: str = _f(
        "auto",
        "what --lambda 0 trains: 'plain' cross-entropy on the labeled crops; 'lambda0-script' = the CGC "
        "script at lambda 0 (limited labels: the unlabeled views are still forwarded in train mode, so "
        "BatchNorm running statistics see them; full supervision: the three CE terms); 'auto' = what the "
        "released code did for the row (limited labels: lambda0-script, full supervision: plain, as "
        "baseline_train_eval.py)",
        choices=("auto", "plain", "lambda0-script"),
    )
    flip_protocol: str = _f(
        "released",
        "how the CGC pair's mirror is drawn: 'released' as the released dataset draws it (a flag "
        "for half the pairs, but RandomHorizontalFlip mirrors only half of those: a quarter of all pairs "
        "train against a mirrored target, FIDELITY.md) or 'consistent' (the loss mirrors exactly the "
        "pairs whose augmented view is mirrored: what the method means)",
        choices=("released", "consistent"),
    )
    bn_geometry: str = _f(
        "replicas",
        "BatchNorm statistics: 'replicas' as the released DataParallel run computed them (each forward "
        "normalised over contiguous replicas of --group-size images, running statistics from the first, "
        "losses averaged over replicas; SyncBatchNorm where a replica spans processes) or 'batch' (over each "
        "process' whole batch)",
        choices=("replicas", "batch"),
    )
    cam_size: int = _f(224, "side the heatmaps are upsampled to inside the loss")
    cam_class: str = _f(
        "predicted",
        "class explained on unlabeled images: the model's 'predicted' class (the method), or the "
        "image's true 'label' (a diagnostic upper bound: it uses labels the limited-label setting does not have)",
        choices=("predicted", "label"),
    )
    explainer: str = _f(
        "gradcam",
        "heatmap method of the consistency loss, Content Heatmap, the gallery and the insertion metric: "
        "'gradcam' (the method and the published numbers), 'gradcam++', 'layercam', 'pgc/<Class>' (any "
        "pytorch-grad-cam method; evaluation only) or a plugin's (semisup.registry.EXPLAINERS)",
    )
    cgc_warmup_epochs: float = _f(
        0.0,
        "ramp lambda linearly from 0 over this many epochs (0: full weight from the first step), "
        "so early, noisy predicted classes weigh less",
    )
    # --- run ---
    run_dir: str | None = _f(
        None,
        "run directory (default runs/<dataset>-<method>-<fraction>-seed<seed>); an unfinished run there is resumed",
        path=True,
    )
    seed: int = _f(0, "seed of sampling, augmentation and initialisation")
    device: str = _f("auto", "'auto', 'cpu' or 'cuda'")
    amp: str = _f(
        "auto", "mixed precision: 'auto' (bf16 on GPUs that support it, else fp16; off on CPU), 'bf16', 'fp16', 'off'",
        choices=("auto", "bf16", "fp16", "off"),
    )
    channels_last: bool = _f(True, "channels_last memory format on GPUs")
    compile: bool | None = _f(
        None, "torch.compile the model's forwards (default: on CUDA, where a step that cannot compile runs again "
        "eagerly and the run stays eager, saying so; off on a CPU, where compiling takes longer than a demo trains)"
    )
    eval_every: int = _f(
        1,
        "top-1/top-5 on validation every N epochs, keeping model_best.pt by top-1 as the released code "
        "did (0: only at the end)",
    )
    ch_every: int = _f(
        0,
        "Content Heatmap, validation CGC loss and kNN every N epochs (0: only at the end, for the final and "
        "the best checkpoint); CH runs at 448 px, the costliest part of an evaluation",
    )
    checkpoint_every: int = _f(500, "also checkpoint every N optimizer steps (0: only at epoch ends)")
    log_every: int = _f(50, "log the running losses every N steps")
    knn_k: int = _f(20, "neighbours for the kNN evaluation")
    knn_temperature: float = _f(0.07, "temperature of the kNN vote weights exp(cos/T)")
    gallery: int = _f(16, "validation images in the end-of-run Grad-CAM gallery PNG (0: none)")
    max_eval_images: int | None = _f(None, "evaluate on at most this many validation images (quick checks)")
    val_cache: str | None = _f(
        None, "folder for the validation crops top-1 reads, decoded once and then read from one uint8 file instead "
        "of decoding every epoch (ImageNet at 224: 7.5 GB; the same numbers; shared by runs of the same images)",
        path=True,
    )
    overwrite: bool = _f(False, "replace a finished run in --run-dir instead of refusing")
    dry_run: bool = _f(False, "build splits, datasets, boxes and model, print a summary and exit")
    recipe: str | None = _f(
        None, "the named preset this run started from (set by --recipe; a record, not a setting)", cli=False
    )
    demo_version: int | None = _f(
        None,
        "version of the embedded demo dataset the run used (set for demo runs; runs made on "
        "another version are never resumed or reused as this one's)",
        cli=False,
    )

    @property
    def is_demo(self) -> bool:
        return self.data is None

    @property
    def method(self) -> str:
        if self.cgc_weight == 0:
            return "ce"
        return "cgc" if self.consistency == "cgc" else "gcc"

    @property
    def full_supervision(self) -> bool:
        return self.labeled_fraction >= 1.0

    @property
    def ce_mode(self) -> str:
        """What a lambda-0 run trains (``ce_baseline`` with 'auto' resolved, see its help)."""
        if self.ce_baseline != "auto":
            return self.ce_baseline
        return "plain" if self.full_supervision else "lambda0-script"

    @property
    def forwards_pairs(self) -> bool:
        """Whether steps forward the view / augmented-view pair (unlabeled, or labeled under full
        supervision): always with lambda > 0, and at lambda 0 when imitating the CGC script."""
        return self.cgc_weight > 0 or self.ce_mode == "lambda0-script"

    def to_dict(self) -> dict:
        return {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }


# Settings that make the embedded demo finish in minutes on a 2-core CPU. Applied only to
# fields the user did not set (by flag or config file) when no --data is given. lambda 0.1,
# not the published 0.25: in the lambda sweep of the earlier demo (dataset version 2, from
# scratch, before the loss matched the released one: results/demo/v2/pre-fidelity/ablations/lambda.md)
# 0.25 cost 5.4 top-1 against 0.1 at 10 % labels (25.39 vs 30.78) for 2.9 more CH, and 0.1 kept
# top-1 at cross-entropy's level (29.97). Not swept again on version 3.
# The demo's self-supervised start, shipped in the repository (pretrained/README.md): the
# quick start fine-tunes it as the published pipeline fine-tunes SwAV. --pretrained none: scratch.
# The embedded demo dataset's version (its images change with it): recorded in every demo run, so a
# report never averages runs made on different images.
DEMO_VERSION = 3
DEMO_START = str(PROJECT_ROOT / "pretrained" / "demo_swav_resnet_tiny.pth")

DEMO_PRESET = dict(
    pretrained=DEMO_START, arch="resnet_tiny", image_size=64, resize_size=64, ch_short_side=64, batch_labeled=32,
    batch_unlabeled=64, epochs=60, lr_trunk=0.05, lr_head=0.05, lr_milestones=(40, 52), workers=0, checkpoint_every=100,
    log_every=20, crop_scale_min=0.25, cgc_weight=0.1, eval_every=5,
)

# The demo's schedule per labeled fraction (an epoch is one pass over the labeled images, so its
# steps grow with the fraction): what the demo table ran (jobs/reproduce_demo_table.py), so that
# `run.py --labeled-fraction 0.1` is that row's run. Other fractions take DEMO_PRESET's (1 %'s).
# A constant-rate 100 % run ended anywhere from 24 to 47 % top-1: hence a decay inside its epoch.
DEMO_SCHEDULES = {0.1: dict(epochs=6, lr_milestones=(4, 5)), 1.0: dict(epochs=1, lr_milestones=(0.7,))}


def demo_preset(labeled_fraction: float) -> dict:
    """The demo's settings for a run at ``labeled_fraction`` (DEMO_PRESET and its schedule)."""
    schedule = next((s for f, s in DEMO_SCHEDULES.items() if abs(f - labeled_fraction) < 1e-9), {})
    return {**DEMO_PRESET, **schedule}


def demo_note(key: str) -> str:
    """The demo's value of a setting in words, e.g. '60 (6 at 10 %, 1 at 100 %)'; '' if none."""
    if key not in DEMO_PRESET:
        return ""
    shown = lambda v: " ".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    by_fraction = [f"{shown(s[key])} at {100 * f:g} %" for f, s in DEMO_SCHEDULES.items() if key in s]
    return shown(DEMO_PRESET[key]) + (f" ({', '.join(by_fraction)})" if by_fraction else "")


# The L2 "GCC" loss is ~1e-5 of the CGC loss' scale (an MSE over 224^2 unit-vector entries): the
# released GCC script's lambda default, used when --consistency l2 is given without --lambda.
GCC_LAMBDA = 1000.0

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def compiles(setting: bool | None, device_type: str) -> bool:
    """Whether a run compiles: ``--compile`` as given, else (the default) on CUDA only (on a CPU
    compiling takes longer than a demo trains). The trainer and the planner ask here."""
    return setting if setting is not None else device_type == "cuda"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))

# Keys that do not change what a run computes: they may differ when resuming.
RESUME_NEUTRAL = {
    "run_dir", "splits_dir", "workers", "decode", "overwrite", "dry_run", "eval_every", "ch_every", "checkpoint_every",
    "log_every", "gallery", "device", "demo_cache", "compile", "max_eval_images", "max_bad_fraction", "recipe",
    "val_cache", "threads",
}


class SettingsView:
    """Base of the narrow, typed settings a part of the pipeline receives instead of the whole
    :class:`Config` (the data builders, the training streams, the evaluator): a frozen dataclass
    whose fields are settings (or properties) of the same names, read by :meth:`of`. The part
    thus says in its signature which settings it depends on, and a test or a plugin builds one
    without a Config."""

    @classmethod
    def of(cls, source):
        """The view's fields read from ``source`` (a Config, or any object with the attributes)."""
        return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls)})


class ConfigError(UsageError, ValueError):
    """A setting that cannot run as given: the message names the flag / YAML key, what it got
    and what it accepts, in one line."""


# Ranges of numeric settings: (test, what it must be). Checked for flags and YAML alike.
_RANGES = {
    "labeled_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "cgc_weight": (lambda v: v >= 0 and math.isfinite(v), ">= 0"),
    "temperature": (lambda v: v > 0 and math.isfinite(v), "> 0"),
    "batch_labeled": (lambda v: v > 0, "> 0"),
    "batch_unlabeled": (lambda v: v > 0, "> 0"),
    "epochs": (lambda v: v > 0, "> 0"),
    "max_steps": (lambda v: v > 0, "> 0 (omit it to train the full schedule)"),
    "group_size": (lambda v: v > 1, "> 1 (an anchor needs a negative)"),
    # Upper bounds: a batch of views at 4096 px was killed for memory in seconds; 1024 is 4.6 times
    # ImageNet's 224 (and Content Heatmap's released 448 twice over).
    "image_size": (lambda v: 16 <= v <= 1024, "in [16, 1024]"),
    "resize_size": (lambda v: 16 <= v <= 1280, "in [16, 1280]"),
    "ch_short_side": (lambda v: 16 <= v <= 1024, "in [16, 1024]"),
    "cam_size": (lambda v: 8 <= v <= 1024, "in [8, 1024]"),
    "crop_scale_min": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "lr_trunk": (lambda v: v >= 0, ">= 0"),
    "lr_head": (lambda v: v >= 0, ">= 0"),
    "lr_gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr_warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "max_bad_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "workers": (lambda v: v >= 0, ">= 0"),
    "threads": (lambda v: v > 0, "> 0 (omit it for the CPUs this process may use)"),
    "num_classes": (lambda v: v > 1, "> 1"),
    "eval_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "ch_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "checkpoint_every": (lambda v: v >= 0, ">= 0 (0: only at epoch ends)"),
    "log_every": (lambda v: v > 0, "> 0"),
    "knn_k": (lambda v: v > 0, "> 0"),
    "knn_temperature": (lambda v: v > 0, "> 0"),
    "gallery": (lambda v: v >= 0, ">= 0"),
    "max_eval_images": (lambda v: v > 0, "> 0"),
    "cgc_warmup_epochs": (lambda v: v >= 0, ">= 0"),
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "split_seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
}


def _name(key: str) -> str:
    """How a user wrote the setting: its flag(s) and its YAML key."""
    aliases = Config.__dataclass_fields__[key].metadata["flags"]
    return " / ".join([*aliases, f"--{key.replace('_', '-')}", key])


def _quoted(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message quotes what was given, not a megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_type(key: str, value, kind) -> None:
    origin = typing.get_origin(kind)
    if origin is list:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
        ):
            raise ConfigError(f"{_name(key)}: expected a list of numbers, got {_quoted(value)}")
        return
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[kind](value)
    if not ok:
        raise ConfigError(f"{_name(key)}: expected {kind.__name__}, got {_quoted(value)} ({type(value).__name__})")


def validate(cfg: "Config", world: int | None = None, registered: bool = True) -> "Config":
    """Refuse a config that cannot run as meant, before anything is created: types, choices and
    ranges of every setting (flags, YAML and recipes alike), a known architecture, and batch
    sizes divisible by the process count. Raises ConfigError naming the setting. ``world`` None:
    the processes the launcher's variables describe (:mod:`semisup.launchenv`, checked).
    ``registered`` False: the explainer and data format are not looked up, so the config's
    ``plugins`` are not imported (a saved run's config is data: its reader checks the names it uses)."""
    world = launchenv.read().world if world is None else world  # the launcher's variables, checked
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        try:
            _check_field(cfg, f, hints)
        except ConfigError as err:
            err.key = f.name
            raise
    if registered:
        _check_registered(cfg)
    _check_combinations(cfg, world)
    return cfg


def check_device(device: str) -> None:
    """A CUDA device this machine has: asked by the run (and its dry run) on the machine it runs
    on, before anything is created; never at submission, whose login node may have no GPU."""
    if not device.startswith("cuda"):
        return
    import torch  # deferred: a config file's own checks need torch only through the registries' modules
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= count:
        raise ConfigError(f"{_name('device')}: {_quoted(device)}, but torch sees {count} CUDA GPU(s) on this machine; "
                          "use --device cpu, or auto (a GPU where there is one)")


def _check_field(cfg: "Config", f: dataclasses.Field, hints: dict) -> None:
    """Type, choices, finiteness and range of one setting."""
    value = getattr(cfg, f.name)
    if value is None:
        if type(None) not in typing.get_args(hints[f.name]):
            raise ConfigError(f"{_name(f.name)}: a value is required")
        return
    _check_type(f.name, value, _field_type(f))
    if f.metadata["path"] and isinstance(value, str) and not value.strip():
        raise ConfigError(f"{_name(f.name)}: an empty path; give a file or folder, or leave the setting out")
    numbers = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
        raise ConfigError(f"{_name(f.name)}: must be a finite number, got {_quoted(value)}")
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise ConfigError(f"{_name(f.name)}: {_quoted(value)} is not one of {', '.join(map(repr, choices))}")
    rule = _RANGES.get(f.name)
    if rule and not rule[0](value):
        raise ConfigError(f"{_name(f.name)}: must be {rule[1]}, got {_quoted(value)}")


def load_plugins(cfg: "Config") -> None:
    """Import the plugin modules a run names (``--plugins``), and those of the environment."""
    registry.load_plugins(registry.split_modules(cfg.plugins))


def _check_registered(cfg: "Config") -> None:
    """Names that registries hold (semisup/registry.py), after the run's plugin modules are imported."""
    load_plugins(cfg)
    if cfg.arch not in registry.BACKBONES:
        raise ConfigError(f"{_name('arch')}: unknown architecture {_quoted(cfg.arch)}; one of "
                          f"{', '.join(registry.BACKBONES.names())} (a plugin module adds more: --plugins MODULE)")
    if cfg.explainer not in registry.EXPLAINERS:
        raise ConfigError(f"{_name('explainer')}: {_quoted(cfg.explainer)} is not one of "
                          f"{', '.join(registry.EXPLAINERS.names())} (a plugin module adds more: --plugins MODULE)")
    if cfg.cgc_weight > 0 and not registry.EXPLAINERS.get(cfg.explainer).differentiable:
        raise ConfigError(f"{_name('explainer')} {cfg.explainer}: not differentiable, so it cannot train the "
                          "consistency loss; use it to evaluate (semisup/evaluate.py --explainer), or --lambda 0")
    if cfg.data_format not in registry.DATA_FORMATS:
        raise ConfigError(f"{_name('data_format')}: {_quoted(cfg.data_format)} is not one of "
                          f"{', '.join(registry.DATA_FORMATS.names())} (a plugin module adds more: --plugins MODULE)")


def _check_combinations(cfg: "Config", world: int) -> None:
    """What single settings cannot say: a known architecture and device, milestones, batches
    divisible by the processes, a decode that needs files."""
    if not (cfg.device in ("auto", "cpu", "cuda") or (cfg.device.startswith("cuda:") and cfg.device[5:].isdigit())):
        raise ConfigError(f"{_name('device')}: {_quoted(cfg.device)} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if any(m < 0 for m in cfg.lr_milestones):
        raise ConfigError(f"{_name('lr_milestones')}: epochs must be >= 0, got {list(cfg.lr_milestones)}")
    for key in ("batch_labeled", "batch_unlabeled"):
        if getattr(cfg, key) % world:
            raise ConfigError(f"{_name(key)}: {getattr(cfg, key)} is not divisible by the {world} processes")
    if cfg.resize_size < cfg.image_size:
        raise ConfigError(f"{_name('resize_size')} {cfg.resize_size} is below {_name('image_size')} {cfg.image_size}: "
                          "the center crop of the view and of top-1 would be zero-padded; give a resize at least as "
                          "large as the crop (the released 256 for 224)")
    if cfg.decode in ("gpu", "cpu-draft") and cfg.is_demo:
        raise ConfigError(
            f"--decode {cfg.decode} decodes image files: it needs --data (the demo dataset is held in memory)"
        )


def _field_type(f: dataclasses.Field):
    hint = typing.get_type_hints(Config)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args and typing.get_origin(hint) is not list else hint


def _number(text: str) -> int | float:
    """An int where the text is integral (so saved configs keep 40, not 40.0), else a float."""
    value = float(text)
    return int(value) if value.is_integer() else value


# --help sections: every command-line setting belongs to one (a test checks none is left out).
HELP_GROUPS = {
    "data": (
        "data", "labeled_fraction", "split_file", "splits_dir", "split_seed", "unlabeled", "val_boxes", "val_labels",
        "val_dir", "data_format", "num_classes", "image_size", "resize_size", "crop_scale_min", "max_bad_fraction",
        "demo_cache",
    ),
    "model": ("arch", "pretrained"),
    "loss (the method)": (
        "cgc_weight", "temperature", "consistency", "group_size", "cgc_negatives", "ce_baseline", "cam_size",
        "cam_class", "explainer", "cgc_warmup_epochs", "flip_protocol", "bn_geometry",
    ),
    "optimisation": (
        "batch_labeled", "batch_unlabeled", "epochs", "max_steps", "lr_trunk", "lr_head", "lr_milestones", "lr_gamma",
        "momentum", "weight_decay", "optimizer", "lr_warmup_epochs", "seed",
    ),
    "evaluation": ("eval_every", "ch_every", "ch_short_side", "knn_k", "knn_temperature", "gallery", "max_eval_images",
                   "val_cache"),
    "run directory": ("run_dir", "checkpoint_every", "log_every", "overwrite", "dry_run"),
    "system": ("device", "amp", "channels_last", "compile", "workers", "threads", "decode", "plugins"),
}


def path_fields() -> list[str]:
    """Settings that name a file or folder."""
    return [f.name for f in dataclasses.fields(Config) if f.metadata["path"]]


def flag_spellings(key: str) -> tuple[str, ...]:
    """Every command-line spelling of a setting: its aliases (``--lambda``, shown first) and ``--name-with-dashes``."""
    return tuple(Config.__dataclass_fields__[key].metadata["flags"]) + (f"--{key.replace('_', '-')}",)


def canonical_key(name: str) -> str | None:
    """The setting a YAML key, a sweep grid key or a flag names (``lambda``, ``--lambda``,
    ``cgc-weight`` and ``cgc_weight`` are one setting), or None for an unknown name."""
    bare = name.lstrip("-").replace("-", "_")
    fields = Config.__dataclass_fields__
    if bare in fields:
        return bare
    for key, f in fields.items():
        if any(alias.lstrip("-").replace("-", "_") == bare for alias in f.metadata["flags"]):
            return key
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        description=(
            "Semi-supervised fine-tuning with Contrastive Grad-CAM Consistency (CGC). Defaults are the published "
            "1 % ImageNet recipe; without --data the demo preset applies to settings not given explicitly."
        )
    )
    files = parser.add_argument_group("settings files")
    files.add_argument(
        "--config",
        help=(
            "YAML file of settings (the flag names, with dashes or underscores; aliases such as "
            "'lambda' too); flags given on the command line override it"
        ),
    )
    files.add_argument(
        "--recipe",
        choices=recipe_names(),
        help="a published row's settings (semisup/recipes/NAME.yaml; needs --data): "
        + ", ".join(recipe_names())
        + "; --config and flags still override them",
    )
    groups = {name: parser.add_argument_group(name) for name in HELP_GROUPS}
    group_of = {key: groups[name] for name, keys in HELP_GROUPS.items() for key in keys}
    for f in dataclasses.fields(Config):
        if f.metadata["cli"]:
            add_setting(group_of[f.name], f.name, argparse.SUPPRESS)
    return parser


def add_setting(target, key: str, default=None, help: str | None = None) -> None:
    """Add setting ``key``'s flag (its spellings, type, choices and help) to ``target``, a parser
    or argument group: run.py's parser and the other commands (evaluate, bench) share one
    vocabulary. ``default`` is what the namespace holds when the flag is absent; ``help``
    replaces the setting's own where the command uses it differently."""
    f = next(f for f in dataclasses.fields(Config) if f.name == key)
    kind, value = _field_type(f), getattr(Config(), key)
    demo = f"; demo: {demo_note(key).replace('%', '%%')}" if key in DEMO_PRESET else ""
    shown = "" if value is None and not demo else f" (default: {value}{demo})"
    kwargs = dict(dest=key, default=default, help=(help or f.metadata["help"].replace("%", "%%") + shown))
    if kind is bool:
        target.add_argument(*flag_spellings(key), action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(kind) is list:
        target.add_argument(*flag_spellings(key), type=_number, nargs="*", **kwargs)
    else:
        target.add_argument(*flag_spellings(key), type=kind, choices=f.metadata["choices"], **kwargs)


def yaml_problem(err: Exception) -> str:
    """A YAML (or reading) error in one line, with the line and column where the parser stopped."""
    mark = getattr(err, "problem_mark", None)
    problem = (
        getattr(err, "problem", None)
        or getattr(err, "strerror", None)
        or (str(err).splitlines() or [type(err).__name__])[0]
    )
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else str(problem)


CONFIG_FILE_LIMIT = 1 << 20  # a config file holds a few hundred bytes; a larger one is refused unparsed
EMPTY = type("Empty", (), {"__repr__": lambda self: "an empty value"})()  # `key:` with nothing after it


class StrictLoader(yaml.SafeLoader):
    """YAML as a config file should be: a key given twice, an alias or an anchor (a few hundred
    bytes of aliases expand to gigabytes) is an error at its line; ``key:`` with no value is
    :data:`EMPTY`, told apart from an explicit ``null`` (which a saved config.yaml writes)."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(
                None, None, "anchors (&name) and aliases (*name) are not accepted: write each value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # a list as a key: the base class refuses it at its line
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{_quoted(key)} is given twice (also on line {seen[key]}): keep one",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_null(self, node):
        return EMPTY if node.value == "" else None


StrictLoader.add_constructor("tag:yaml.org,2002:null", StrictLoader.construct_yaml_null)


def _yaml_mapping(path: Path, error: type, what: str) -> dict:
    """The mapping a YAML file holds (empty: none), or ``error`` naming the file and ``what`` it is;
    read only if a regular file under :data:`CONFIG_FILE_LIMIT`, with :class:`StrictLoader`."""
    from semisup.files import read_text
    try:
        values = yaml.load(read_text(path, CONFIG_FILE_LIMIT, error), Loader=StrictLoader) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        problem = "nested too deeply" if isinstance(err, RecursionError) else yaml_problem(err)
        raise error(f"{path}: {problem} ({what}: a YAML mapping of setting: value)") from err
    if not isinstance(values, dict):
        raise error(f"{path}: expected a mapping of setting: value, got {type(values).__name__} ({what})")
    return values


def load_yaml(path: str | Path) -> dict:
    """Settings from a YAML mapping, keyed by setting name (flag names and aliases accepted)."""
    path = Path(path)
    values = _yaml_mapping(path, ConfigError, "a config file")
    resolved, unknown, given_as = {}, [], {}
    for name, value in values.items():
        key = canonical_key(str(name))
        if key is None:
            unknown.append(name)
            continue
        if key in resolved:
            raise ConfigError(f"config file {path}: {given_as[key]!r} and {name!r} both set {key}: keep one")
        if value is EMPTY:
            raise ConfigError(f"config file {path}: {name!r} has no value; give one ('none' where the setting allows "
                              "it), or leave the key out for its default")
        resolved[key], given_as[key] = value, name
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown keys {_quoted(unknown)}; valid keys are the flag names (with dashes or "
            "underscores, aliases such as 'lambda' too; see python semisup/run.py --help)"
        )
    return resolved




def load_recipe(name: str) -> dict:
    """A recipe's settings. Its relative paths (``pretrained: pretrained/resnet50-19c8e357.pth``)
    name the project's own folders, where the download commands put the files, so they are
    taken relative to the project root, whatever the working directory."""
    values = load_yaml(RECIPES_DIR / f"{name}.yaml")
    for key in path_fields():
        value = values.get(key)
        if isinstance(value, str) and value.lower() != "none" and not Path(value).expanduser().is_absolute():
            values[key] = str(PROJECT_ROOT / value)
    return dict(values, recipe=name)


# Settings a dataset or mode never reads: (where, when, which). Given there with a value other than
# its default, such a setting is refused rather than ignored (a --split-file on the demo trained
# on the demo's own subset; --num-classes was never checked). The generated tests read this table.
STANDARD_FRACTIONS = (0.01, 0.1)  # the SimCLR split files (semisup.data.splits.STANDARD)
UNUSED_WHERE = (
    ("the embedded demo (no --data)", lambda c: c.is_demo,
     ("split_file", "splits_dir", "split_seed", "val_boxes", "val_labels", "val_dir", "data_format", "num_classes")),
    ("a dataset on disk (--data)", lambda c: not c.is_demo, ("demo_cache",)),
    ("--data-format fgvc-aircraft (its own trainval/test split, no boxes)",
     lambda c: not c.is_demo and c.data_format == "fgvc-aircraft",
     ("split_file", "splits_dir", "split_seed", "val_boxes", "val_labels", "val_dir", "num_classes", "unlabeled")),
    ("full supervision (--labeled-fraction 1.0: every image labeled, the pairs formed on them)",
     lambda c: c.full_supervision, ("unlabeled", "split_seed")),
    ("a standard split (--labeled-fraction 0.01 or 0.1 read from the SimCLR file, no --split-file)",
     lambda c: not c.is_demo and not c.split_file and c.labeled_fraction in STANDARD_FRACTIONS, ("split_seed",)),
    ("a --split-file (it names the labeled images)", lambda c: c.split_file is not None, ("split_seed",)),
    ("--optimizer adamw (no momentum term)", lambda c: c.optimizer == "adamw", ("momentum",)),
)
# Not refused although unread in some modes, because one command line serves several: --splits-dir
# (a folder, like --run-root) beside a --split-file, and --batch-unlabeled in full supervision (a sweep
# over fractions shares it; the start line says "unlabeled not used").


def check_used(cfg: Config, explicit: dict) -> None:
    """Refuse a setting given (flag or config file) where the dataset or mode never reads it."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    if cfg.is_demo:
        defaults.update(demo_preset(cfg.labeled_fraction))
    for where, applies, keys in UNUSED_WHERE:
        if not applies(cfg):
            continue
        for key in keys:
            if explicit.get(key) is not None and getattr(cfg, key) != defaults[key]:
                raise ConfigError(f"{_name(key)}: {_quoted(getattr(cfg, key))} means nothing for {where}; leave it out")


def make_config(explicit: dict, recipe: str | None = None) -> Config:
    """Resolve a Config from explicitly chosen values (flags and config-file entries) over a
    named recipe, over the demo preset (no --data), over the dataclass defaults."""
    if recipe and explicit.get("data") is None:
        raise ConfigError(
            f"--recipe {recipe}: a recipe reproduces a published row on its dataset; pass --data (without --data "
            "the run would train on the embedded demo)"
        )
    chosen = load_recipe(recipe) if recipe else {}
    chosen.update(explicit)
    fraction = chosen.get("labeled_fraction", Config.labeled_fraction)
    values = demo_preset(fraction) if explicit.get("data") is None and isinstance(fraction, (int, float)) else {}
    if chosen.get("consistency") == "l2" and "cgc_weight" not in chosen:
        values["cgc_weight"] = GCC_LAMBDA
    values.update(chosen)
    if values.get("data") is None:
        values["demo_version"] = DEMO_VERSION
    if isinstance(values.get("pretrained"), str) and values["pretrained"].lower() == "none":
        values["pretrained"] = None  # --pretrained none: random initialisation
    if isinstance(values.get("lr_milestones"), list):
        values["lr_milestones"] = tuple(values["lr_milestones"])
    for key in path_fields():  # `~/runs` from a flag (--run-dir=~/r, where no shell expands it) or YAML: the home
        if isinstance(values.get(key), str) and values[key].startswith("~"):
            values[key] = os.path.expanduser(values[key])
    cfg = validate(Config(**values))
    check_used(cfg, explicit)
    return cfg


def parse_config(argv: list[str] | None = None) -> Config:
    args = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    config_file = args.pop("config", None)
    recipe = args.pop("recipe", None)
    from_file = load_yaml(config_file) if config_file else {}
    explicit = dict(from_file, **args)
    try:
        return make_config(explicit, recipe)
    except ConfigError as err:
        key = getattr(err, "key", None)
        if key in from_file and key not in args:  # the value came from the YAML file: say which file
            raise ConfigError(f"config file {config_file}: {err}") from err
        raise


def save_config(cfg: Config, path: Path, code: dict | None = None) -> None:
    """config.yaml: every setting, then (``code``) the commit the run used and whether the tree
    had uncommitted edits. Loading ignores ``code``: it records, it does not configure."""
    values = cfg.to_dict()
    if code is not None:
        values["code"] = code
    from semisup.files import write_text_atomic
    write_text_atomic(path, yaml.safe_dump(values, sort_keys=False))  # a resume reads it: never half a file


def load_saved_config(path: Path) -> Config:
    """The config a run saved (settings added since it ran take their defaults); RunFileError
    naming the file when it is not YAML, not a mapping, or holds values no run could have had.
    The modules its ``plugins`` names are never imported: a run folder is data
    (:func:`semisup.registry.not_loaded_note` says which were left out)."""
    from semisup.files import RunFileError
    path = Path(path)
    values = _yaml_mapping(path, RunFileError, "the run's record of its settings")
    try:
        return validate(config_from_dict(values), world=1, registered=False)
    except (TypeError, ValueError) as err:
        raise RunFileError(f"{path}: {err} (edited by hand?)") from err


def settings_unknown_here(path: Path) -> dict:
    """The settings a saved config.yaml holds that this version does not know (written by a newer
    one): runs that differ in them must not be taken for seeds of one row."""
    from semisup.files import RunFileError
    values = _yaml_mapping(Path(path), RunFileError, "the run's record of its settings")
    known = {f.name for f in dataclasses.fields(Config)}
    return {str(k): v for k, v in values.items() if str(k) not in known and k != "code"}  # `1: x` too


# What a run saved before a setting existed computed: a saved config without the key gets this
# value, not today's default (runs made before the released flip protocol and BatchNorm replicas).
LEGACY_VALUES = {"flip_protocol": "consistent", "bn_geometry": "batch"}


def config_from_dict(values: dict) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    values = {**LEGACY_VALUES, **{k: v for k, v in values.items() if k in known}}
    if isinstance(values.get("lr_milestones"), list):
        values["lr_milestones"] = tuple(values["lr_milestones"])
    return Config(**values)


def differing_keys(a: Config, b: Config) -> list[str]:
    """Settings that differ between two configs, ignoring those that do not change results."""
    da, db = a.to_dict(), b.to_dict()
    return sorted(k for k in da if k not in RESUME_NEUTRAL and da[k] != db.get(k))
