"""Self-supervised starting points for ``--pretrained``.

    python -m semisup.pretrained download [--name swav_800ep]   # into pretrained/, then verified

The files are the public SwAV / DeepCluster-v2 ResNet-50 releases (facebookresearch/swav), and
torchvision's original ImageNet ResNet-50 (``resnet50-19c8e357.pth``, the ``--pretrained`` start
of the released fine-grained runs; ``--name torchvision_resnet50_v1``). No checksum is published
for the SwAV files, so verification is structural: the file must load as a ResNet-50 trunk with
every one of its tensors matched (``semisup.models.load_pretrained``); its sha256 is printed so
it can be recorded with the results.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

from semisup.errors import UserError, cli

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
_BASE = "https://dl.fbaipublicfiles.com/deepcluster/"
CHECKPOINTS = {
    "swav_800ep": "swav_800ep_pretrain.pth.tar",  # the start of the published 1 % ImageNet result
    "swav_400ep": "swav_400ep_pretrain.pth.tar",
    "swav_200ep": "swav_200ep_pretrain.pth.tar",
    "swav_100ep": "swav_100ep_pretrain.pth.tar",
    "deepclusterv2_800ep": "deepclusterv2_800ep_pretrain.pth.tar",
    "torchvision_resnet50_v1": "resnet50-19c8e357.pth",  # the fine-grained recipes' start (models/resnet_multigpu_cgc.py)
}
# Where each file is published (the SwAV files under _BASE).
URLS = {"torchvision_resnet50_v1": "https://download.pytorch.org/models/resnet50-19c8e357.pth"}


def verify(path: Path, arch: str = "resnet50") -> dict:
    from semisup.models import build_model, load_pretrained
    return load_pretrained(build_model(arch, num_classes=1000), path)


def download(name: str, dest: Path = PRETRAINED_DIR) -> Path:
    """Fetch ``name`` into ``dest`` unless a file there already verifies; a file that fails
    verification (a broken earlier download) is moved to ``<name>.failed`` and fetched again."""
    from semisup.models import CheckpointError
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / CHECKPOINTS[name]
    if path.is_file():
        try:
            verify(path)
        except CheckpointError as err:
            print(f"{path} fails verification ({err}); downloading it again (the old file is kept as {path.name}.failed)")
            path.replace(path.with_name(path.name + ".failed"))
    if not path.is_file():
        part = path.with_suffix(".part")
        url = URLS.get(name, _BASE + CHECKPOINTS[name])
        print(f"downloading {url} -> {path}")
        try:
            urllib.request.urlretrieve(url, part)
        except OSError as err:  # no network, DNS, HTTP errors
            raise UserError(f"could not download {url} ({err}); copy the file to {path} from a machine with network "
                            "access (it is verified when used)") from err
        part.replace(path)
    report = verify(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path}: {report['loaded']} trunk tensors verified, {report['unused']} unused entries; sha256 {digest}")
    return path


@cli
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
