"""The backbone interface and registry: ``--arch`` names a registered :class:`CamBackbone`.

Every backbone is a trunk giving a [B, C, h, w] map and a linear head ``fc`` over its spatial
mean. Adding one is a ``@register_backbone("name")`` class (``resnet.py`` and ``timm_backbone.py``
are the two here; a plugin module's is named with ``--plugins``): ``semisup.registry.BACKBONES``
is the one list of ``--arch`` names, which the settings' validation asks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn

from semisup.registry import BACKBONES


class CamBackbone(nn.Module):
    """The interface of every backbone: a conv trunk, global average pool and a linear head ``fc``.

    ``features(x)``: [B, 3, H, W] -> [B, C, h, w], the last conv block, where Grad-CAM is taken.
    ``head(features)``: [B, C, h, w] -> [B, K], ``fc`` over the spatial mean.
    ``forward(x)``: -> (logits [B, K], features [B, C, h, w]).
    The head is every parameter named under :attr:`HEAD_PREFIX`: it starts fresh and trains at its
    own learning rate; the rest is the trunk, which pretrained files initialise.
    """

    # logits = fc(mean over space of features): the explainers may use Grad-CAM's closed form.
    pooled_linear_head = True
    HEAD_PREFIX = "fc."
    fc: nn.Linear
    arch: str

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, K]."""
        return self.fc(features.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.head(features), features

    def is_head(self, name: str) -> bool:
        """Whether a parameter or state-dict name belongs to the head (the one place the split is made)."""
        return name.startswith(self.HEAD_PREFIX)

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if self.is_head(n)]

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Every parameter but the head's, in ``named_parameters`` order."""
        return [p for n, p in self.named_parameters() if not self.is_head(n)]

    def trunk_keys(self) -> list[str]:
        return [k for k in self.state_dict() if not self.is_head(k)]

    def checkpoint_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A pretrained file's tensors (wrapper prefixes stripped) under this model's names."""
        return state


BackboneFactory = Callable[[str, int], CamBackbone]


def register_backbone(*names: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """``@register_backbone("name", "family/")`` on a class or function ``(arch, num_classes) ->
    CamBackbone``: its ``--arch`` names in ``semisup.registry.BACKBONES`` (a name ending in "/"
    serves a family: "timm/" builds every "timm/<name>"). A plugin module registers the same way."""
    def add(factory: BackboneFactory) -> BackboneFactory:
        for name in names:
            if name.endswith("/"):
                BACKBONES.register_family(name, lambda arch: factory)
            else:
                BACKBONES.register(name, factory)
        return factory
    return add


def known_arch(arch: str) -> bool:
    return arch in BACKBONES


def build_model(arch: str, num_classes: int) -> CamBackbone:
    """The registered backbone ``arch`` with a fresh ``num_classes``-way head (an unknown name:
    one line naming the choices)."""
    return BACKBONES.get(arch)(arch, num_classes)


@contextmanager
def batchnorm_statistics_kept(model: nn.Module) -> Iterator[None]:
    """Forwards inside leave BatchNorm's running statistics (and counts) as they were: a pass
    whose statistics must move once, by its own forward (the released train-mode saliency pass),
    stays that way whatever an explainer forwards again."""
    buffers = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False) if b is not None})
               for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, saved in buffers:
                for name, value in saved.items():
                    getattr(module, name).copy_(value)
