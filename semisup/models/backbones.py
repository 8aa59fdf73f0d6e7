"""ResNet classifiers that also return their last-block features, and checkpoint loading.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``), so
torchvision, SwAV and DeepCluster-v2 ResNet checkpoints load without renaming.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock

from semisup.method import cgc
from semisup import checkpoint as ckpt
from semisup.config import config_from_dict
from semisup.errors import UserError

log = logging.getLogger(__name__)

# Prefixes that self-supervised checkpoints put in front of the trunk's names.
_WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# Entries of SwAV / DeepCluster-v2 checkpoints that a classifier does not use.
_SSL_HEAD_PREFIXES = ("projection_head.", "prototypes.")


class CamResNet(nn.Module):
    """ResNet trunk + global average pool + linear head.

    ``forward(x)`` with x [B, 3, H, W] returns (logits [B, K], features [B, C, h, w]), the
    features being the output of the last conv block (``layer4``), where Grad-CAM is taken.
    """

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        net = _tiny_resnet(num_classes) if arch == "resnet_tiny" else torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "fc"):
            setattr(self, name, getattr(net, name))
        self.arch = arch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, H/stride, W/stride]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, K]."""
        return self.fc(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features

    def cam(self, logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Grad-CAM [B, h, w] float32 for ``classes`` (element-wise gradients, as in CGC).

        For the linear head this is the closed form (equal to :func:`semisup.method.cgc.gradcam`,
        tested) and needs no second backward; any other head goes through autograd."""
        if isinstance(self.fc, nn.Linear):
            return cgc.linear_head_cam(features, self.fc.weight, classes)
        return cgc.gradcam(logits, features, classes)

    def trunk_keys(self) -> list[str]:
        return [k for k in self.state_dict() if not k.startswith("fc.")]


def _tiny_resnet(num_classes: int) -> nn.Module:
    """A four-stage BasicBlock ResNet, widths 16-128, total stride 16 (demo scale: a 64 px
    image gives a 4 x 4 last block). Same module names as torchvision's ResNet."""
    net = nn.Module()
    widths = (16, 32, 64, 128)
    net.conv1 = nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.Identity()
    in_ch = widths[0]
    for i, (width, stride) in enumerate(zip(widths, (1, 2, 2, 2)), start=1):
        down = None
        if stride != 1 or in_ch != width:
            down = nn.Sequential(nn.Conv2d(in_ch, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        setattr(net, f"layer{i}", nn.Sequential(BasicBlock(in_ch, width, stride, down)))
        in_ch = width
    net.fc = nn.Linear(in_ch, num_classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def build_model(arch: str, num_classes: int) -> CamResNet:
    return CamResNet(arch, num_classes)


class CheckpointError(UserError, ValueError):
    """A pretrained checkpoint that cannot initialise the chosen architecture."""


def load_pretrained(model: CamResNet, path: str | Path) -> dict:
    """Initialise ``model``'s trunk from a SwAV/DeepCluster-v2, torchvision or own checkpoint.

    The classifier head always starts fresh. Every trunk tensor must be matched by name and
    shape (``strict=False`` silently loading nothing is the trap this avoids).

    Returns:
        dict with counts ``loaded``, ``missing`` (trunk keys absent), ``unused`` (checkpoint
        keys not used) and the lists themselves.
    Raises:
        CheckpointError naming the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (see pretrained/README.md for the download command)")
    manifest = verify_manifest(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for garbage files
        first_line = (str(err).splitlines() or [""])[0]  # torch's messages run to paragraphs
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {first_line})") from err
    state = _extract_state_dict(obj, path)
    state = {_strip_prefixes(k): v for k, v in state.items()}

    target = model.state_dict()
    trunk = model.trunk_keys()
    loaded, mismatched = {}, []
    for key in trunk:
        if key in state:
            if state[key].shape != target[key].shape:
                mismatched.append(f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(target[key].shape)}")
            else:
                loaded[key] = state[key]
    # BatchNorm's step counter is not a weight; older checkpoints lack it.
    weights = [k for k in trunk if not k.endswith("num_batches_tracked")]
    missing = [k for k in weights if k not in state]
    unused = [k for k in state if k not in loaded and not k.endswith("num_batches_tracked")]
    if mismatched:
        raise CheckpointError(
            f"{path}: {len(mismatched)} trunk tensors do not match --arch {model.arch}, e.g. {mismatched[:3]}; "
            "choose the architecture the checkpoint was trained with")
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} of {len(weights)} trunk tensors not found (e.g. {missing[:3]}); "
            f"checkpoint keys look like {list(state)[:3]}. Is this a {model.arch} checkpoint?")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in loaded.items()}, strict=False)  # shipped fp16 -> fp32
    report = dict(loaded=len(loaded), missing=len(missing), unused=len(unused), unused_keys=unused, manifest=manifest)
    log.info("loaded %d trunk tensors from %s; %d unused checkpoint entries (%s)", len(loaded), path,
             len(unused), ", ".join(sorted({k.split(".")[0] for k in unused})) or "none")
    return report


def verify_manifest(path: Path) -> dict | None:
    """Weights shipped with a manifest ``<file>.json`` (the demo's SwAV-style start) must match
    its sha256: a changed or damaged file is refused, never trained from. Returns the manifest
    (with its command and kNN numbers), or None for files without one."""
    import hashlib
    import json
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.exists():
        return None
    if not sidecar.is_file():
        raise CheckpointError(f"{sidecar}: a folder where the weights' manifest (a JSON file with their sha256) belongs")
    try:
        manifest = json.loads(sidecar.read_text())
        expected = manifest["sha256"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{sidecar}: not a readable manifest with a 'sha256' ({type(err).__name__}); `git checkout -- {sidecar}` "
                              "restores the shipped one") from err
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise CheckpointError(f"{path}: sha256 {digest[:16]}... does not match {sidecar.name} ({manifest['sha256'][:16]}...); the "
                              f"file was changed or damaged: `git checkout -- {path}` restores it, or remake it with "
                              f"`{manifest.get('command', 'python -m semisup.tools.pretrain')}`")
    return manifest


def _extract_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):  # this project's checkpoints; common wrappers
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (got {type(obj).__name__}); "
                              "expected a SwAV/torchvision state dict or a checkpoint saved by this project")
    return obj


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def load_weights(path: str | Path, arch: str) -> tuple[CamResNet, dict]:
    """A whole model from a weights file that semisup/run.py did not write: torchvision's ResNet
    files (``fc.*``), the released CGC checkpoints (``{'state_dict': {'module.…'}}``, torchvision
    names, or SwAV's with the classifier as ``projection_head``), or a SwAV / DeepCluster-v2 trunk
    (no classifier: the model then has no head, ``report['head'] is False``). Every tensor the
    model has must be in the file with its shape, and every tensor of the file must be used
    (a pretraining head excepted); otherwise CheckpointError in one line.

    Returns (model with ``num_classes`` from the file's head, report {loaded, head, num_classes})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--weights {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for garbage files
        raise CheckpointError(f"--weights {path}: not a readable PyTorch file ({type(err).__name__})") from err
    state = {_strip_prefixes(k): v for k, v in _extract_state_dict(obj, path).items()}
    if "fc.weight" not in state and isinstance(state.get("projection_head.weight"), torch.Tensor):
        # The released 1 % CGC models: a SwAV ResNet whose one-layer projection_head is the classifier.
        state = {("fc." + k[len("projection_head."):] if k.startswith("projection_head.") else k): v for k, v in state.items()}
    head = "fc.weight" in state
    pretraining = [k for k in state if k.startswith(_SSL_HEAD_PREFIXES)] if not head else []
    state = {k: v for k, v in state.items() if k not in pretraining}
    num_classes = int(state["fc.weight"].shape[0]) if head else 1000
    model = build_model(arch, num_classes)
    expected = {k: v for k, v in model.state_dict().items() if head or not k.startswith("fc.")}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unused = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs {arch} {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if wrong or missing or unused:
        detail = (f"{len(wrong)} tensors of another shape, e.g. {wrong[:2]}" if wrong else
                  f"{len(missing)} of the model's tensors missing, e.g. {missing[:3]}" if missing else
                  f"{len(unused)} tensors of the file unused, e.g. {unused[:3]}")
        raise CheckpointError(f"--weights {path} is not a {arch} ({detail}); pass the --arch it was trained as")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)  # every key checked above
    return model, dict(loaded=len(state), head=head, num_classes=num_classes if head else None, ignored=pretraining)


def load_run_model(checkpoint: str | Path, overrides: dict):
    """(model, cfg, step) from a checkpoint saved by this project; ``overrides`` replace config
    values (e.g. the data path on another machine)."""
    path = Path(checkpoint)
    if path.is_dir():
        hint = " (it holds no checkpoint.pt yet)" if not (path / "checkpoint.pt").exists() else f": pass {path / 'checkpoint.pt'}"
        raise UserError(f"--checkpoint {path} is a folder{hint}; pass a run's checkpoint.pt or model_best.pt")
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file; pass a run's checkpoint.pt or model_best.pt")
    try:
        state = ckpt.load(path)
    except Exception as err:  # torch raises several types for damaged files
        raise UserError(f"--checkpoint {path}: not a readable checkpoint ({type(err).__name__}); truncated, or not written by "
                        "semisup/run.py") from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{checkpoint}: not a checkpoint written by semisup/run.py (no 'model' and 'config' entries)")
    values = dict(state["config"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = config_from_dict(values)
    num_classes = state["model"]["fc.weight"].shape[0]
    model = build_model(cfg.arch, num_classes)
    model.load_state_dict(state["model"])
    return model, cfg, state.get("step")
