"""Fixed-seed short runs whose weights and metrics pin what the pipeline computes.

A refactor that must not change any computed number (moving code, naming state, splitting the
step out of the trainer) re-runs these and compares with the digests recorded before it:

    python -m tests.invariance --record      # after a change that is meant to alter the numbers

The record holds the machine's torch version and CPU kernel capability: float32 kernels differ
between CPU generations, so bit-equality is asserted only where they match.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

RECORD = Path(__file__).with_name("invariance_digests.json")

DEMO = ["--max-eval-images", "48", "--gallery", "0", "--batch-labeled", "16", "--batch-unlabeled", "16", "--workers", "0"]
CASES = {
    "demo-limited": ["--labeled-fraction", "0.05", "--max-steps", "5", *DEMO],
    "demo-full": ["--labeled-fraction", "1.0", "--max-steps", "3", *DEMO],
    "demo-limited-l2": ["--labeled-fraction", "0.05", "--max-steps", "3", "--consistency", "l2", *DEMO],
}
METRICS = ("top1", "top5", "ch", "train_ce", "train_consistency", "train_loss")


def machine() -> dict:
    return dict(torch=torch.__version__, cpu=torch.backends.cpu.get_cpu_capability())


def summary(result: dict) -> dict:
    """What a case pins: the final weights' digest, the last epoch's metrics and the steps."""
    final = result["final"]
    return dict(weights_sha256=result["weights_sha256"], steps=result["steps"],
                metrics={k: final[k] for k in METRICS if k in final})


def run_demo_case(name: str, workdir: Path, demo_cache: str) -> dict:
    from semisup.config import parse_config
    from semisup.train.trainer import train
    args = [*CASES[name], "--demo-cache", demo_cache, "--run-dir", str(workdir / name)]
    return summary(train(parse_config(args)))


def run_imagenet_case(workdir: Path) -> dict:
    """A generated ImageNet-layout tree (JPEGs, VOC boxes), the tiny ResNet at 64 px."""
    from semisup.config import parse_config
    from semisup.train.trainer import train
    from tests.imagenet_tree import make_tree
    root = workdir / "imagenet"
    make_tree(root, bad=False)
    args = ["--data", str(root), "--val-boxes", str(root / "boxes"), "--arch", "resnet_tiny", "--image-size", "64",
            "--resize-size", "72", "--ch-short-side", "64", "--workers", "0", "--splits-dir", str(workdir / "splits"),
            "--batch-labeled", "4", "--batch-unlabeled", "4", "--gallery", "0", "--labeled-fraction", "0.5",
            "--epochs", "2", "--run-dir", str(workdir / "imagenet-run")]
    return summary(train(parse_config(args)))


def run_gloo_case(workdir: Path, demo_cache: str) -> dict:
    """Two gloo processes on the CPU, the limited-label demo run."""
    from tests.dist_utils import _train_worker, spawn
    args = [*CASES["demo-limited"], "--demo-cache", demo_cache, "--run-dir", str(workdir / "gloo")]
    spawn(_train_worker, args, str(workdir))
    return summary(torch.load(workdir / "rank0.pt", weights_only=False)["result"])


def run_all(workdir: Path, demo_cache: str) -> dict:
    out = {name: run_demo_case(name, workdir, demo_cache) for name in CASES}
    out["imagenet-tree"] = run_imagenet_case(workdir)
    out["gloo-2-process"] = run_gloo_case(workdir, demo_cache)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write {RECORD.name} from this machine's runs")
    parser.add_argument("--demo-cache", default=None, help="an existing demo-dataset cache (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        cases = run_all(Path(tmp), args.demo_cache or str(Path(tmp) / "demo_cache"))
    text = json.dumps(dict(machine=machine(), cases=cases), indent=1, sort_keys=True) + "\n"
    if args.record:
        RECORD.write_text(text)
        print(f"wrote {RECORD}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
