"""timm models as CAM classifiers: ``--arch timm/<model name>`` (``timm/resnet18``,
``timm/convnext_atto``, ``timm/deit_tiny_patch16_224``, ...).

Convolutional models: the trunk is timm's model without its classifier and pooling
(``num_classes=0, global_pool=""``); its ``forward_features`` map [B, C, h, w] is where Grad-CAM
is taken, and the head is this project's ``fc`` over the map's spatial mean, as for the ResNets.

Token models (ViT, DeiT: ``forward_features`` gives [B, N, C] tokens): the map is the patch
tokens entering the last block's attention (its ``norm1`` output, pytorch-grad-cam's choice for
ViTs), the prefix tokens dropped and the rest laid out on the patch grid of the input, [B, C,
H/p, W/p]; the head is ``fc`` over the final class token, as ViTs classify. That head is not a
pooled linear one (``pooled_linear_head = False``), so explainers take their autograd path. The
model accepts any input size a multiple of its patch (``dynamic_img_size``). timm is optional:
this module is imported only when a ``timm/`` arch is built.
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
        self.tokens = _gives_tokens(self.body)
        if self.tokens:
            self.body = _create(arch, dynamic_img_size=True)  # any input size, the grid follows it
            self.pooled_linear_head = False  # logits from the class token: no closed-form Grad-CAM
            for block in self.body.blocks:  # the CGC loss differentiates Grad-CAM: a second backward, which
                if hasattr(block.attn, "fused_attn"):  # torch's fused attention kernels do not have
                    block.attn.fused_attn = False
        self.fc = nn.Linear(self.body.num_features, num_classes)
        _freeze_unused(self.body, arch, self.tokens)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, C, h, w]: timm's last stage (before any head norm), or a token
        model's patch tokens at its last block's input, on the patch grid."""
        return self.forward(x)[1] if self.tokens else self.body.forward_features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.tokens:
            return super().forward(x)
        grids = []

        def through_the_grid(module, inputs, tokens):
            # The last block attends over tokens rebuilt from the grid (the same numbers), so the
            # logits depend on the grid and Grad-CAM's gradient reaches it.
            grid = token_grid(tokens, self.body, x.shape[-2:])
            grids.append(grid)
            prefix = tokens[:, :tokens.shape[1] - grid.shape[2] * grid.shape[3]]
            return torch.cat([prefix, grid.flatten(2).transpose(1, 2)], dim=1)

        hook = self.body.blocks[-1].norm1.register_forward_hook(through_the_grid)
        try:
            tokens = self.body.forward_features(x)  # [B, N, C], after the final norm
        finally:
            hook.remove()
        return self.fc(tokens[:, 0]), grids[-1]

    def checkpoint_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's own files name the trunk without ``body.``; this project's checkpoints with it."""
        own = set(self.state_dict())
        return {f"body.{k}" if f"body.{k}" in own else k: v for k, v in state.items()}


def token_grid(tokens: torch.Tensor, body: nn.Module, input_hw) -> torch.Tensor:
    """[B, N, C] tokens -> [B, C, h, w]: the prefix (class, distillation, register) tokens
    dropped, the patches laid out row by row on the input's patch grid."""
    ph, pw = body.patch_embed.patch_size
    h, w = input_hw[0] // ph, input_hw[1] // pw
    patches = tokens[:, getattr(body, "num_prefix_tokens", 1):]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def _gives_tokens(body: nn.Module) -> bool:
    """Whether ``forward_features`` gives [B, N, C] tokens of a patch-embedding model (a ViT)."""
    return hasattr(body, "patch_embed") and hasattr(body, "blocks") and getattr(body, "num_prefix_tokens", 0) >= 1


def _create(arch: str, **options) -> nn.Module:
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
        return timm.create_model(name, pretrained=False, num_classes=0, global_pool="", **options)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:  # models that refuse these arguments
        first_line = (str(err).splitlines() or [""])[0]
        raise UserError(f"--arch {arch}: timm cannot build it without classifier and pooling "
                        f"({type(err).__name__}: {first_line})") from err


def _freeze_unused(body: nn.Module, arch: str, tokens: bool = False) -> None:
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
    if tokens:
        out = out[:, :1]  # the class token, the head's input: what it does not reach is unused
    elif not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != body.num_features:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"--arch {arch}: its features are {shape}, not a [B, {body.num_features}, h, w] map that "
                        "Grad-CAM needs; choose a convolutional or ViT-style timm model (resnet*, convnext*, deit*)")
    named = [(n, p) for n, p in body.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True)
    unused = [n for (n, p), g in zip(named, grads) if g is None]
    for name, p in named:
        if name in unused:
            p.requires_grad_(False)
    if unused:
        log.info("%s: %d parameters outside forward_features frozen (%s)", arch, len(unused), ", ".join(unused[:4]))
