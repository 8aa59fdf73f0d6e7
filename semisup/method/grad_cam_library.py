"""Every pytorch-grad-cam method as an evaluation explainer: ``--explainer pgc/<Class>``
(``pgc/ScoreCAM``, ``pgc/AblationCAM``, ``pgc/EigenCAM``, ``pgc/XGradCAM``, ...), for Content
Heatmap, insertion/deletion and the gallery. Not differentiable, so not for training.

One adapter: the model's forward is split at its feature map (``features`` then ``head``, the
:class:`~semisup.models.base.CamBackbone` interface) with an identity layer between them, which
is the library's target layer. The library returns maps at the input's size, min-max scaled to
[0, 1]; the metrics resize maps of any size. It sets the model to eval mode while it runs (its
own rule); the mode is restored after. pytorch-grad-cam (``pip install grad-cam``) is imported
only when such an explainer runs: it takes seconds to import.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from semisup.errors import UserError
from semisup.method.explainers import ExplainRequest, register_explainer_family

PREFIX = "pgc/"


class _SplitAtFeatures(nn.Module):
    """``head(tap(features(x)))``: the model's logits with ``tap`` on its feature map."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.tap = model, nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.tap(self.model.features(x)))


def _method(name: str):
    """pytorch-grad-cam's class ``name``; one line if the library or the class is missing."""
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.base_cam import BaseCAM
    except ImportError as err:
        raise UserError(f"--explainer {PREFIX}{name}: pytorch-grad-cam is not installed; pip install grad-cam") from err
    method = getattr(pytorch_grad_cam, name, None)
    if not (isinstance(method, type) and issubclass(method, BaseCAM)):
        known = sorted(n for n, c in vars(pytorch_grad_cam).items() if isinstance(c, type) and issubclass(c, BaseCAM))
        raise UserError(f"--explainer {PREFIX}{name}: pytorch-grad-cam has no such method; one of "
                        + ", ".join(PREFIX + n for n in known))
    return method


@register_explainer_family(PREFIX, differentiable=False)
def library_explainer(full_name: str):
    """The explainer ``pgc/<Class>``: request -> [B, H, W] float32 maps in [0, 1] at the input's size."""
    name = full_name[len(PREFIX):]

    def explain(r: ExplainRequest) -> torch.Tensor:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        if r.images is None or not (hasattr(r.model, "features") and hasattr(r.model, "head")):
            raise UserError(f"--explainer {full_name}: needs the images and a backbone with features() and head()")
        split, was_training = _SplitAtFeatures(r.model), r.model.training
        try:
            with torch.enable_grad(), _method(name)(model=split, target_layers=[split.tap]) as cam:
                maps = cam(input_tensor=r.images, targets=[ClassifierOutputTarget(int(c)) for c in r.classes])
        finally:
            r.model.train(was_training)
        return torch.from_numpy(maps).float().to(r.features.device)
    return explain
