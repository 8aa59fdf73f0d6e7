"""Self-supervised starting points for ``--pretrained``.

    python -m semisup.pretrained download [--name swav_800ep]   # into pretrained/, then verified

The files are the public SwAV / DeepCluster-v2 ResNet-50 releases (facebookresearch/swav).
No checksum is published for them, so verification is structural: the file must load as a
ResNet-50 trunk with every one of its tensors matched (``semisup.models.load_pretrained``);
its sha256 is printed so it can be recorded with the results.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
_BASE = "https://dl.fbaipublicfiles.com/deepcluster/"
CHECKPOINTS = {
    "swav_800ep": "swav_800ep_pretrain.pth.tar",  # the start of the published 1 % ImageNet result
    "swav_400ep": "swav_400ep_pretrain.pth.tar",
    "swav_200ep": "swav_200ep_pretrain.pth.tar",
    "swav_100ep": "swav_100ep_pretrain.pth.tar",
    "deepclusterv2_800ep": "deepclusterv2_800ep_pretrain.pth.tar",
}


def verify(path: Path, arch: str = "resnet50") -> dict:
    from semisup.models import build_model, load_pretrained
    return load_pretrained(build_model(arch, num_classes=1000), path)


def download(name: str, dest: Path = PRETRAINED_DIR) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / CHECKPOINTS[name]
    if not path.is_file():
        part = path.with_suffix(".part")
        print(f"downloading {_BASE + CHECKPOINTS[name]} -> {path}")
        urllib.request.urlretrieve(_BASE + CHECKPOINTS[name], part)
        part.replace(path)
    report = verify(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}: {report['loaded']} trunk tensors verified, {report['unused']} unused entries; sha256 {digest}")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["download", "verify"])
    parser.add_argument("--name", choices=sorted(CHECKPOINTS), default="swav_800ep")
    parser.add_argument("--path", type=Path, help="with verify: the file to check")
    parser.add_argument("--dest", type=Path, default=PRETRAINED_DIR)
    args = parser.parse_args(argv)
    if args.command == "download":
        download(args.name, args.dest)
    else:
        report = verify(args.path or args.dest / CHECKPOINTS[args.name])
        print(f"ok: {report['loaded']} trunk tensors matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
