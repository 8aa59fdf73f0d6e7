"""Weights into backbones: pretrained trunks (SwAV / DeepCluster-v2, torchvision, timm, this
project's runs), any weights file for evaluation, and a run's checkpoint with its config."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from semisup import checkpoint as ckpt
from semisup.config import config_from_dict
from semisup.errors import UserError
from semisup.files import parse_json, read_text
from semisup.models.base import CamBackbone, build_model
from semisup.runfiles import RunFiles

log = logging.getLogger(__name__)

# Prefixes that self-supervised checkpoints put in front of the trunk's names.
_WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
# Entries of SwAV / DeepCluster-v2 checkpoints that a classifier does not use.
_SSL_HEAD_PREFIXES = ("projection_head.", "prototypes.")


class CheckpointError(UserError, ValueError):
    """A pretrained checkpoint that cannot initialise the chosen architecture."""


def load_pretrained(model: CamBackbone, path: str | Path) -> dict:
    """Initialise ``model``'s trunk from a SwAV/DeepCluster-v2, torchvision or own checkpoint
    (for ``timm/`` archs: a timm state dict of the model, or an own checkpoint).

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
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {first_line})") from err
    state = _extract_state_dict(obj, path)
    state = model.checkpoint_state({_strip_prefixes(k): v for k, v in state.items()})

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
    non_finite = [k for k, v in loaded.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if non_finite:  # the run would stop at its first checkpoint; the dry run loads the same way and says it now
        raise CheckpointError(f"{path}: {len(non_finite)} trunk tensors hold non-finite values (e.g. "
                              f"{non_finite[:3]}); the file is damaged or was saved from a diverged run: use another "
                              "start")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in loaded.items()}, strict=False)  # shipped fp16 -> fp32
    report = dict(loaded=len(loaded), missing=len(missing), unused=len(unused), unused_keys=unused, manifest=manifest,
                  trunk_sha256=_tensors_digest(loaded))
    log.info("loaded %d trunk tensors from %s; %d unused checkpoint entries (%s)", len(loaded), path,
             len(unused), ", ".join(sorted({k.split(".")[0] for k in unused})) or "none")
    return report


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors' values: what a start is, whatever its file is called (two files
    named resnet50.pth are told apart by it in the report)."""
    import hashlib
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def verify_manifest(path: Path) -> dict | None:
    """Weights shipped with a manifest ``<file>.json`` (the demo's SwAV-style start) must match
    its sha256: a changed or damaged file is refused, never trained from. Returns the manifest
    (with its command and kNN numbers), or None for files without one."""
    import hashlib
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.exists():
        return None
    if not sidecar.is_file():
        raise CheckpointError(
            f"{sidecar}: a folder where the weights' manifest (a JSON file with their sha256) belongs")
    try:
        manifest = parse_json(read_text(sidecar))
        expected = manifest["sha256"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{sidecar}: not a readable manifest with a 'sha256' ({type(err).__name__}); "
                              f"`git checkout -- {sidecar}` restores the shipped one") from err
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise CheckpointError(f"{path}: sha256 {digest[:16]}... does not match {sidecar.name} "
                              f"({manifest['sha256'][:16]}...); the file was changed or damaged: "
                              f"`git checkout -- {path}` restores it, or remake it with "
                              f"`{manifest.get('command', 'semisup-pretrain')}`")
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


def load_weights(path: str | Path, arch: str) -> tuple[CamBackbone, dict]:
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
        state = {("fc." + k[len("projection_head."):] if k.startswith("projection_head.") else k): v
                 for k, v in state.items()}
    head = "fc.weight" in state
    pretraining = [k for k in state if k.startswith(_SSL_HEAD_PREFIXES)] if not head else []
    state = {k: v for k, v in state.items() if k not in pretraining}
    num_classes = int(state["fc.weight"].shape[0]) if head else 1000
    model = build_model(arch, num_classes)
    expected = {k: v for k, v in model.state_dict().items() if head or not model.is_head(k)}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unused = [k for k in state if k not in expected]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs {arch} {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if wrong or missing or unused:  # every kind counted: one shape mismatch may hide 150 missing tensors
        detail = "; ".join(f"{len(found)} {what}, e.g. {', '.join(found[:2])}" for found, what in (
            (wrong, "tensors of another shape"), (missing, f"of the {len(expected)} model tensors missing"),
            (unused, f"of the file's {len(state)} tensors unused")) if found)
        raise CheckpointError(f"--weights {path} is not a {arch} ({detail}); pass the --arch it was trained as")
    # every key was checked above
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    return model, dict(loaded=len(state), head=head, num_classes=num_classes if head else None, ignored=pretraining)


def load_run_model(checkpoint: str | Path, overrides: dict):
    """(model, cfg, step) from a checkpoint saved by this project; ``overrides`` replace config
    values (e.g. the data path on another machine)."""
    model, cfg, step, _ = load_run(checkpoint, overrides)
    return model, cfg, step


def load_run(checkpoint: str | Path, overrides: dict):
    """(model, cfg, step, the class names it was trained on or None for checkpoints older than
    that record) from a checkpoint saved by this project: :func:`load_run_model` and the classes."""
    path = Path(checkpoint)
    if path.is_dir():
        saved = RunFiles(path).checkpoint
        hint = " (it holds no checkpoint.pt yet)" if not saved.exists() else f": pass {saved}"
        raise UserError(f"--checkpoint {path} is a folder{hint}; pass a run's checkpoint.pt or model_best.pt")
    if not path.is_file():
        raise UserError(f"--checkpoint {path}: no such file; pass a run's checkpoint.pt or model_best.pt")
    try:
        state = ckpt.load(path)
    except Exception as err:  # torch raises several types for damaged files
        raise UserError(f"--checkpoint {path}: not a readable checkpoint ({type(err).__name__}); truncated, or not "
                        "written by semisup/run.py") from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{checkpoint}: not a checkpoint written by semisup/run.py (no 'model' and 'config' entries)")
    weights = state["model"]
    if not isinstance(weights, dict) or not isinstance(weights.get("fc.weight"), torch.Tensor):
        raise UserError(f"{checkpoint}: its weights hold no classification head (no 'fc.weight'): damaged, or not "
                        "written by semisup/run.py; evaluate a trunk with --weights FILE --arch NAME")
    if not isinstance(state["config"], dict):
        raise UserError(f"{checkpoint}: its 'config' entry is not a mapping of settings: damaged, or not written by "
                        "semisup/run.py")
    values = dict(state["config"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = config_from_dict(values)
    except TypeError as err:
        raise UserError(f"{checkpoint}: its record of the run's settings cannot be read ({err})") from err
    num_classes = weights["fc.weight"].shape[0]
    model = build_model(cfg.arch, num_classes)
    model.load_state_dict(state["model"])
    data = state.get("data") if isinstance(state.get("data"), dict) else {}
    classes = data.get("classes") if isinstance(data.get("classes"), list) else None
    return model, cfg, state.get("step"), classes
