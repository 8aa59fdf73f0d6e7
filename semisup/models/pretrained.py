"""Self-supervised starting points for ``--pretrained``.

    semisup-pretrained download [--name swav_800ep]   # into pretrained/, then verified

The files are the public SwAV / DeepCluster-v2 ResNet-50 releases (facebookresearch/swav), and
torchvision's original ImageNet ResNet-50 (``resnet50-19c8e357.pth``, the ``--pretrained`` start
of the released fine-grained runs; ``--name torchvision_resnet50_v1``). No checksum is published
for the SwAV files, so verification is structural: the file must load as a ResNet-50 trunk with
every one of its tensors matched (``semisup.models.loading.load_pretrained``); its sha256 is printed so
it can be recorded with the results.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import urllib.request
from pathlib import Path

from semisup.config import PROJECT_ROOT
from semisup.errors import Parser, UserError, cli

PRETRAINED_DIR = PROJECT_ROOT / "pretrained"
_BASE = "https://dl.fbaipublicfiles.com/deepcluster/"
CHECKPOINTS = {
    "swav_800ep": "swav_800ep_pretrain.pth.tar",  # the start of the published 1 % ImageNet result
    "swav_400ep": "swav_400ep_pretrain.pth.tar",
    "swav_200ep": "swav_200ep_pretrain.pth.tar",
    "swav_100ep": "swav_100ep_pretrain.pth.tar",
    "deepclusterv2_800ep": "deepclusterv2_800ep_pretrain.pth.tar",
    "torchvision_resnet50_v1": (
        "resnet50-19c8e357.pth"
    ),  # the fine-grained recipes' start (models/resnet_multigpu_cgc.py)
    # torchvision's ImageNet classifiers (IMAGENET1K_V1): the poster's cross-entropy rows, evaluated, not trained
    "torchvision_resnet18": "resnet18-f37072fd.pth",
    "torchvision_resnet50": "resnet50-0676ba61.pth",
}
# Where each file is published (the SwAV files under _BASE).
URLS = {"torchvision_resnet50_v1": "https://download.pytorch.org/models/resnet50-19c8e357.pth",
        "torchvision_resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "torchvision_resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth"}
# The architecture of each file (the SwAV / DeepCluster-v2 ones are ResNet-50 trunks).
ARCHS = {"torchvision_resnet18": "resnet18"}
# Whole classifiers (loaded with their head by `semisup.eval.evaluator --weights`), not trunks.
CLASSIFIERS = ("torchvision_resnet18", "torchvision_resnet50")


def verify(path: Path, arch: str = "resnet50", name: str | None = None) -> dict:
    """Load ``path`` as the file ``name`` must be: torchvision's files carry the first digits of
    their sha256 in their name (``resnet18-f37072fd.pth``), which must match; classifiers must
    load whole (every tensor, head included), trunks as a ResNet trunk."""
    from semisup.models.base import build_model
    from semisup.models.loading import CheckpointError, load_pretrained, load_weights
    path = Path(path)
    if name in URLS and "download.pytorch.org" in URLS[name]:
        prefix = path.name.rsplit(".", 1)[0].rsplit("-", 1)[-1]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(prefix):
            raise CheckpointError(
                f"{path}: sha256 {digest[:12]}... does not start with {prefix}, the digest torchvision publishes "
                "in its name (a damaged or other file)"
            )
    if name in CLASSIFIERS:
        return load_weights(path, arch)[1]
    return load_pretrained(build_model(arch, num_classes=1000), path)


def download(name: str, dest: Path = PRETRAINED_DIR) -> Path:
    """Fetch ``name`` into ``dest`` unless a file there already verifies; a file that fails
    verification (a broken earlier download) is moved to ``<name>.failed`` and fetched again."""
    from semisup.models.loading import CheckpointError
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / CHECKPOINTS[name]
    arch = ARCHS.get(name, "resnet50")
    if path.is_file():
        try:
            verify(path, arch, name)
        except CheckpointError as err:
            print(
                f"{path} fails verification ({err}); downloading it again (the old file is kept as {path.name}.failed)"
            )
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
    report = verify(path, arch, name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    unused = "" if name in CLASSIFIERS else f", {report['unused']} unused entries"
    print(f"{path}: {report['loaded']} tensors verified{unused}; sha256 {digest}")
    return path


@cli
def main(argv=None) -> int:
    parser = Parser(
        prog="semisup-pretrained", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["download", "verify"])
    parser.add_argument("--name", choices=sorted(CHECKPOINTS), default="swav_800ep")
    parser.add_argument("--path", type=Path, help="with verify: the file to check")
    parser.add_argument("--dest", type=Path, default=PRETRAINED_DIR)
    args = parser.parse_args(argv)
    if args.command == "download":
        download(args.name, args.dest)
    else:
        report = verify(args.path or args.dest / CHECKPOINTS[args.name], ARCHS.get(args.name, "resnet50"), args.name)
        print(f"ok: {report['loaded']} tensors matched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
