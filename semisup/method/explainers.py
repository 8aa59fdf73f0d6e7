"""Heatmap methods: one small, differentiable function per explanation, over one interface.

An explainer maps a forward pass to class heatmaps::

    explainer(model, logits [B, K], features [B, C, h, w], classes [B] long) -> [B, h, w] float32

``features`` are the backbone's last conv block, part of ``logits``' graph; the heatmap stays
differentiable (the CGC loss trains it). Where the model's head is global-average-pool +
linear (``model.fc``, every backbone here) a method may use its closed form and skip the second
backward through the network; otherwise it goes through autograd. The training loss, Content
Heatmap, the gallery and the insertion metric all call the explainer ``--explainer`` names.

Adding a method is two edits: one function here (or in a file of its own, imported here) with
``@register("name")``, and its name in ``semisup.config.EXPLAINER_NAMES``, which the settings'
validation reads before any model is built (a test checks the two lists agree).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from semisup.method import cgc

Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EXPLAINERS: dict[str, Explainer] = {}


def register(name: str) -> Callable[[Explainer], Explainer]:
    def add(fn: Explainer) -> Explainer:
        EXPLAINERS[name] = fn
        return fn
    return add


def get(name: str) -> Explainer:
    """The explainer ``--explainer`` names (the config has checked it is one of :data:`EXPLAINERS`)."""
    return EXPLAINERS[name]


def pooled_linear_head(model: nn.Module) -> nn.Linear | None:
    """The model's linear head when its logits are ``fc(mean over space of features)``, else None."""
    head = getattr(model, "fc", None)
    return head if isinstance(head, nn.Linear) and getattr(model, "pooled_linear_head", False) else None


@register("gradcam")
def gradcam(model: nn.Module, logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM with element-wise gradients, as in CGC (equal to the pooled form for a linear head)."""
    head = pooled_linear_head(model)
    if head is not None:
        return cgc.linear_head_cam(features, head.weight, classes)
    return cgc.gradcam(logits, features, classes)


# pytorch-grad-cam's GradCAMPlusPlus adds this to the alpha denominator.
PLUS_PLUS_EPS = 1e-6


def _plus_plus_map(grads: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ from first gradients (the exponential-score identity, as pytorch-grad-cam):
    alpha = g^2 / (2 g^2 + sum_ab(A) g^3), weight_k = sum_ab relu(g) alpha, cam = relu(sum_k weight_k A_k).

    grads, features: [B, C, h, w] float32 -> [B, h, w]."""
    g2 = grads * grads
    alpha = g2 / (2 * g2 + features.sum(dim=(2, 3), keepdim=True) * g2 * grads + PLUS_PLUS_EPS)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    weights = (F.relu(grads) * alpha).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * features).sum(1))


@register("gradcam++")
@cgc.float32
def gradcam_plus_plus(
    model: nn.Module, logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al.). For a pooled linear head dS_c/dA = W_c / (h w) at every
    position, so the gradients are a broadcast of the class weights (no second backward);
    otherwise they come from autograd, with the graph kept for training."""
    features = features.float()
    head = pooled_linear_head(model)
    if head is not None:
        h, w = features.shape[-2:]
        grads = (head.weight.float()[classes] / (h * w))[:, :, None, None].expand_as(features)
    else:
        score = logits.float().gather(1, classes.view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(score, features, create_graph=True)
    return _plus_plus_map(grads.float(), features)


def autograd_definition(name: str) -> Explainer:
    """The method through autograd even where a closed form exists (tests compare the two)."""
    def explain(model, logits, features, classes):
        return get(name)(_NoClosedForm(), logits, features, classes)
    return explain


class _NoClosedForm(nn.Module):
    """A stand-in model without a pooled linear head: the explainers take their autograd path."""
