"""Backbones (``base``: the interface and registry; ``resnet``, ``timm_backbone``: the registered
ones), weights loading (``loading``) and the released replicas' BatchNorm (``replicas``)."""
from semisup.models import resnet, timm_backbone  # noqa: F401 (importing a backbone's module registers it)
