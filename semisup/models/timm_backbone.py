"""timm models as CAM classifiers: ``--arch timm/<model name>`` (``timm/resnet18``, ``timm/convnext_atto``, ...).

The trunk is timm's model without its classifier and pooling (``num_classes=0, global_pool=""``);
its ``forward_features`` map [B, C, h, w] is where Grad-CAM is taken, and the head is this
project's ``fc`` over the map's spatial mean, as for the ResNets. Models whose features are not
such a map (ViTs' tokens, channels-last maps) are refused. timm is optional: this module is
imported only when a ``timm/`` arch is built.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from semisup.errors import UserError
from semisup.models.base import CamBackbone, register_backbone

log = logging.getLogger(__name__)

PREFIX = "timm/"


@register_backbone(PREFIX)
class TimmBackbone(CamBackbone):
    """``body``: the timm model without classifier; ``fc``: the linear head over its pooled features."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        self.arch = arch
        self.body = _create(arch)
        self.fc = nn.Linear(self.body.num_features, num_classes)
        _freeze_unused(self.body, arch)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, H/stride, W/stride]: timm's last stage (before any head norm)."""
        return self.body.forward_features(x)

    def checkpoint_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's own files name the trunk without ``body.``; this project's checkpoints with it."""
        own = set(self.state_dict())
        return {f"body.{k}" if f"body.{k}" in own else k: v for k, v in state.items()}


def _create(arch: str) -> nn.Module:
    """timm's model ``arch`` names, without classifier and pooling; UserError in one line if it cannot be."""
    try:
        import timm
    except ImportError as err:
        raise UserError(f"--arch {arch}: timm is not installed; pip install timm") from err
    name = arch[len(PREFIX):]
    if not timm.is_model(name):
        raise UserError(f"--arch {arch}: timm {timm.__version__} has no model {name!r}; "
                        f"`python -c \"import timm; print(timm.list_models('{name}*'))\"` lists similar names")
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:  # models that refuse these arguments
        first_line = (str(err).splitlines() or [""])[0]
        raise UserError(f"--arch {arch}: timm cannot build it without classifier and pooling "
                        f"({type(err).__name__}: {first_line})") from err


def _freeze_unused(body: nn.Module, arch: str) -> None:
    """Check on one image of the model's default size that ``forward_features`` gives [1, C, h, w]
    (C = ``num_features``), and freeze the parameters it does not use (e.g. ConvNeXt's head norm):
    they stay in the state dict, so timm's files load strictly, but DistributedDataParallel
    would otherwise wait forever for their gradients."""
    size = tuple(body.pretrained_cfg.get("input_size") or (3, 224, 224))
    training = body.training
    body.eval()  # BatchNorm's running statistics stay untouched, and one image normalises
    try:
        out = body.forward_features(torch.zeros(1, *size))
    finally:
        body.train(training)
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != body.num_features:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"--arch {arch}: its features are {shape}, not a [B, {body.num_features}, h, w] map that "
                        "Grad-CAM needs; choose a convolutional timm model (resnet*, convnext*, efficientnet*, ...)")
    named = [(n, p) for n, p in body.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True)
    unused = [n for (n, p), g in zip(named, grads) if g is None]
    for name, p in named:
        if name in unused:
            p.requires_grad_(False)
    if unused:
        log.info("%s: %d parameters outside forward_features frozen (%s)", arch, len(unused), ", ".join(unused[:4]))
