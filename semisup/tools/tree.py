"""``semisup-bench tree``: ImageNet-scale input on the CPU, measured on a tree of ImageNet's size.

    semisup-bench tree --root DIR [--classes 1000] [--train 1281167] [--val 50000] [--out FILE]

Builds (once) a tree of ImageNet's layout and size under ``DIR``: ``train/<wnid>/<wnid>_<k>.JPEG``
(1,281,167 files in 1,000 class folders), a flat ``val/`` of 50,000 files with one VOC XML each in
``boxes/``, and a 1 % split file. Every file is a hard link to one of a few JPEGs (and XMLs), so the
tree costs directory entries, not gigabytes. Then it measures, as a user meets them:

* the dry run (``run.py --dry-run``), cold (no file index: built and cached) and warm (the cached
  index, checked against the folders' sizes and modification times);
* the time from starting ``run.py`` to its first step line;
* each loader worker's proportional memory (PSS) before and after it walks every entry of the
  training index: what copy-on-write costs a worker over an epoch.

One JSON line per measurement; ``--out`` also writes them to a file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from semisup.config import PROJECT_ROOT
from semisup.errors import Parser
from semisup.files import write_text_atomic
from semisup.tools.measure import emit

TEMPLATES, SIZES = 64, 8  # distinct JPEGs the files link to (a file system allows ~65,000 links to one), of 8 sizes


def wnid(c: int) -> str:
    return f"n{c:08d}"


def build_tree(root: Path, classes: int, train: int, val: int) -> Path:
    """The tree (made once: ``root/.complete`` marks it) and its 1 % split file."""
    split = root / "split_1percent.txt"
    if (root / ".complete").is_file():
        return split
    from PIL import Image
    templates = root / "templates"
    templates.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    shapes = [(int(rng.integers(300, 500)), int(rng.integers(300, 500))) for _ in range(SIZES)]
    sizes = [shapes[t % SIZES] for t in range(TEMPLATES)]
    for t, (w, h) in enumerate(sizes):
        small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(templates / f"{t}.JPEG", quality=90)
    per_class = [train // classes + (c < train % classes) for c in range(classes)]
    labeled = []
    for c in range(classes):
        folder = root / "train" / wnid(c)
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class[c]):
            name = f"{wnid(c)}_{k}.JPEG"
            target = folder / name
            if not target.exists():
                os.link(templates / f"{(c + k) % TEMPLATES}.JPEG", target)
            if k % 100 == 0:
                labeled.append(name)
    (root / "val").mkdir(exist_ok=True)
    (root / "boxes").mkdir(exist_ok=True)
    for c in range(classes):  # one annotation per class and size: the image's size and its class
        for t, (w, h) in enumerate(shapes):
            box = f"<xmin>{w // 4}</xmin><ymin>{h // 4}</ymin><xmax>{3 * w // 4}</xmax><ymax>{3 * h // 4}</ymax>"
            write_text_atomic(templates / f"{c}_{t}.xml",
                f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size><object>"
                f"<name>{wnid(c)}</name><bndbox>{box}</bndbox></object></annotation>")
    for k in range(val):
        c, t, image_id = k % classes, k % TEMPLATES, f"ILSVRC2012_val_{k + 1:08d}"
        if not (root / "val" / f"{image_id}.JPEG").exists():
            os.link(templates / f"{t}.JPEG", root / "val" / f"{image_id}.JPEG")
            os.link(templates / f"{c}_{t % SIZES}.xml", root / "boxes" / f"{image_id}.xml")
    write_text_atomic(split, "\n".join(labeled) + "\n")
    write_text_atomic(root / ".complete", json.dumps(dict(classes=classes, train=train, val=val)))  # marks a whole tree
    return split


def run_command(root: Path, split: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "semisup" / "run.py"), "--data", str(root), "--val-boxes",
            str(root / "boxes"), "--split-file", str(split), "--run-dir", str(run_dir), "--device", "cpu", *extra]


def timed(command: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - started, done.stdout + done.stderr


def first_step_seconds(command: list[str], env: dict) -> float:
    """Seconds from starting ``command`` to its first step line (then it is stopped)."""
    started = time.perf_counter()
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        for line in proc.stderr:
            if " step 1/" in line:
                seconds = time.perf_counter() - started
                proc.kill()
                return seconds
        raise RuntimeError("the run ended without a step line")


def worker_pss(root: Path, workers: int) -> dict[str, list[dict]]:
    """Each loader worker's PSS (MiB) before and after it walks every training index entry: the
    index as the pipeline holds it (numpy arrays) and, beside it, as a Python list of str (how it
    was held before: the walk's reference counts copy the parent's pages into the worker)."""
    import torch

    from semisup.data.datasets import FileSource
    from semisup.data.imagenet import scan_class_folders
    classes, paths, labels, _ = scan_class_folders(root / "train")
    variants = {"numpy arrays (PathTable)": FileSource(paths, labels), "list of str": _ListSource(list(paths), labels)}
    del paths
    out = {}
    for name, source in variants.items():
        loader = torch.utils.data.DataLoader(_Walk(source), batch_size=None, num_workers=workers,
                                             sampler=list(range(workers)), multiprocessing_context="fork")
        out[name] = [dict(worker=int(w), pss_before_mib=round(before, 1), pss_after_mib=round(after, 1),
                          growth_mib=round(after - before, 1)) for w, before, after in loader]
    return out


class _ListSource:
    """The training index as a list of str (the baseline)."""

    def __init__(self, paths: list[str], labels):
        self.paths, self.labels = paths, list(labels)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index]


class _Walk:
    """Item w: (w, PSS before, PSS after walking the source's names and labels) in a worker."""

    def __init__(self, source):
        self.source = source

    def __getitem__(self, index: int):
        import torch
        info = torch.utils.data.get_worker_info()
        before = _pss_mib()
        total = 0
        for i in range(len(self.source)):
            total += len(self.source.name(i)) + int(self.source.labels[i])  # every entry read, as an epoch does
        return (info.id if info else 0), before, _pss_mib()


def _pss_mib() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(args.root).expanduser()
    started = time.perf_counter()
    split = build_tree(root, args.classes, args.train, args.val)
    rows = [emit(bench="tree", what="tree ready", seconds=round(time.perf_counter() - started, 1),
                 train=args.train, val=args.val)]
    cache = root.parent / f".{root.name}-index-cache"
    env = {**os.environ, "SEMISUP_INDEX_CACHE": str(cache)}
    runs = root.parent / f".{root.name}-runs"
    dry = run_command(root, split, runs / "dry", "--dry-run", "--workers", str(args.workers))
    import shutil
    shutil.rmtree(cache, ignore_errors=True)
    cold, _ = timed(dry, env)
    warm, text = timed(dry, env)
    rows.append(emit(bench="tree", what="dry run", cold_s=round(cold, 1), warm_s=round(warm, 1)))
    shutil.rmtree(runs / "first", ignore_errors=True)
    first = first_step_seconds(run_command(
        root, split, runs / "first", "--arch", "resnet_tiny", "--image-size", "64", "--resize-size", "72",
        "--batch-labeled", "32", "--batch-unlabeled", "32", "--log-every", "1", "--max-steps", "2",
        "--workers", str(args.workers), "--pretrained", "none"), env)
    rows.append(emit(bench="tree", what="first step", seconds=round(first, 1), index="cached"))
    for variant, walked in worker_pss(root, args.workers).items():
        rows.append(emit(bench="tree", what="worker PSS over a walk of the index", index=variant, workers=walked,
                         largest_growth_mib=max(w["growth_mib"] for w in walked)))
    if args.out:
        write_text_atomic(Path(args.out), "".join(json.dumps(r) + "\n" for r in rows))
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="semisup-bench tree", description=__doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="where the tree is made (once) and read")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train", type=int, default=1_281_167)
    parser.add_argument("--val", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2, help="loader workers of the first step and the PSS walk")
    parser.add_argument("--out", help="also write the JSON lines here")
    return parser
