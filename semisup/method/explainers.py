"""Heatmap methods: explainers that receive a request, registered by name.

An explainer maps an :class:`ExplainRequest` to class heatmaps::

    explainer(request) -> [B, h, w] float32
    request.images [B, 3, H, W] (normalised), .logits [B, K], .features [B, C, h, w],
    .classes [B] long, .model, .forward(images) -> (logits, features)

``features`` are the backbone's last block (a token backbone's patch grid). Differentiable
explainers (``differentiable=True``) train with the CGC loss: their heatmap stays in the graph.
Where the model's head is global-average-pool + linear (``pooled_linear_head``) a method may use
its closed form and skip the second backward; otherwise :meth:`ExplainRequest.graph` gives
logits and features inside an autograd graph (recomputed from the images where the caller ran
without one, e.g. under ``torch.no_grad`` in evaluation). Methods that only need the images and
a forward (Score-CAM, ablation, perturbation) are evaluation-only: CH, insertion and the gallery.

Adding a method is one function in a file of its own, with ``@register_explainer("name")``; the
registry (``semisup.registry.EXPLAINERS``) is the only list of names. A file outside the package
is loaded with ``--plugins MODULE``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from semisup.method import cgc
from semisup.registry import EXPLAINERS


@dataclass
class ExplainRequest:
    """What an explainer may look at: the images, the forward pass and the classes to explain."""

    model: nn.Module  # the unwrapped model: its head decides closed forms
    images: torch.Tensor | None  # [B, 3, H, W] normalised input (None: the caller kept none)
    logits: torch.Tensor  # [B, K]
    features: torch.Tensor  # [B, C, h, w]
    classes: torch.Tensor  # [B] long
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None  # default: model

    def graph(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) inside an autograd graph: the request's own where they have one,
        else the forward run again on the images with gradients on."""
        if self.features.requires_grad:
            return self.logits, self.features
        if self.images is None:
            raise RuntimeError("this explainer needs gradients: pass the images to recompute the forward")
        with torch.enable_grad():
            logits, features = (self.forward or self.model)(self.images)
        return logits, features


@dataclass(frozen=True)
class Explainer:
    """A registered method: ``fn(request) -> [B, h, w]``; ``differentiable``: it can train with CGC."""

    name: str
    fn: Callable[[ExplainRequest], torch.Tensor]
    differentiable: bool
    summary: str
    closed_form: bool = False  # needs no autograd where the head is pooled linear (evaluation may run without)

    def needs_autograd(self, model: nn.Module) -> bool:
        """Whether explaining ``model`` differentiates its forward (no inference mode around it)."""
        return not (self.closed_form and pooled_linear_head(model) is not None)

    def __call__(self, request: ExplainRequest) -> torch.Tensor:
        if request.features.requires_grad or not self.needs_autograd(request.model):
            return self.fn(request)
        # The caller ran without a graph (evaluation): the method differentiates a forward of its
        # own, so gradients are on while it runs; its maps leave without a graph.
        with torch.enable_grad():
            return self.fn(request).detach()


def register_explainer(name: str, differentiable: bool = True, closed_form: bool = False) -> Callable:
    """``@register_explainer("name")`` on ``fn(request) -> [B, h, w]``; its docstring's first line is
    its summary. ``closed_form``: it computes pooled linear heads' maps without autograd."""
    def add(fn: Callable[[ExplainRequest], torch.Tensor]) -> Callable[[ExplainRequest], torch.Tensor]:
        summary = ((fn.__doc__ or name).strip().splitlines() or [name])[0]
        EXPLAINERS.register(name, Explainer(name, fn, differentiable, summary, closed_form))
        return fn
    return add


def register_explainer_family(prefix: str, differentiable: bool = False) -> Callable:
    """``@register_explainer_family("lib/")`` on ``make(name) -> fn(request)``: every ``lib/<name>``."""
    def add(make: Callable[[str], Callable[[ExplainRequest], torch.Tensor]]):
        EXPLAINERS.register_family(prefix, lambda name: Explainer(name, make(name), differentiable, name))
        return make
    return add


def get(name: str) -> Explainer:
    """The explainer ``--explainer`` names (one line naming the choices if there is none)."""
    return EXPLAINERS.get(name)


def explain(name: str, model: nn.Module, images: torch.Tensor | None, logits: torch.Tensor, features: torch.Tensor,
            classes: torch.Tensor) -> torch.Tensor:
    """[B, h, w] heatmaps of ``classes`` by the explainer ``name`` (see :class:`ExplainRequest`)."""
    return get(name)(ExplainRequest(model, images, logits, features, classes))


def pooled_linear_head(model: nn.Module) -> nn.Linear | None:
    """The model's linear head when its logits are ``fc(mean over space of features)``, else None."""
    head = getattr(model, "fc", None)
    return head if isinstance(head, nn.Linear) and getattr(model, "pooled_linear_head", False) else None


def gradcam(model: nn.Module, logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM with element-wise gradients, as in CGC (equal to the pooled form for a linear head):
    [B, h, w] from logits [B, K] and features [B, C, h, w] of one graph."""
    head = pooled_linear_head(model)
    if head is not None:
        return cgc.linear_head_cam(features, head.weight, classes)
    return cgc.gradcam(logits, features, classes)


@register_explainer("gradcam", closed_form=True)
def _gradcam(r: ExplainRequest) -> torch.Tensor:
    """Grad-CAM as CGC trains it (the released method): relu(sum_k dS_c/dA_k * A_k)."""
    return _on_request(gradcam, r)


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


def class_gradients(model: nn.Module, logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor
                    ) -> torch.Tensor:
    """dS_c/dA [B, C, h, w] of each image's class score: for a pooled linear head W_c / (h w) at
    every position, a broadcast of the class weights (no second backward); otherwise from
    autograd, with the graph kept for training."""
    head = pooled_linear_head(model)
    if head is not None:
        h, w = features.shape[-2:]
        return (head.weight.float()[classes] / (h * w))[:, :, None, None].expand_as(features)
    score = logits.float().gather(1, classes.view(-1, 1)).sum()
    (grads,) = torch.autograd.grad(score, features, create_graph=True)
    return grads


def _on_request(method: Callable, r: ExplainRequest) -> torch.Tensor:
    """``method(model, logits, features, classes)`` on a request: its own tensors where a closed
    form needs no graph, else the logits and features of a graph."""
    if pooled_linear_head(r.model) is not None:
        return method(r.model, r.logits, r.features, r.classes)
    return method(r.model, *r.graph(), r.classes)


@cgc.float32
def gradcam_plus_plus(
    model: nn.Module, logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor
) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al.). For a pooled linear head dS_c/dA = W_c / (h w) at every
    position, so the gradients are a broadcast of the class weights (no second backward);
    otherwise they come from autograd, with the graph kept for training."""
    features = features.float()
    return _plus_plus_map(class_gradients(model, logits, features, classes).float(), features)


@register_explainer("gradcam++", closed_form=True)
def _gradcam_plus_plus(r: ExplainRequest) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al.), pytorch-grad-cam's formula."""
    return _on_request(gradcam_plus_plus, r)


@cgc.float32
def layercam(model: nn.Module, logits: torch.Tensor, features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): relu(sum_k relu(dS_c/dA_k) * A_k), [B, h, w]. For a pooled
    linear head the gradient is W_c / (h w) at every position (a closed form)."""
    features = features.float()
    return F.relu((F.relu(class_gradients(model, logits, features, classes)) * features).sum(1))


@register_explainer("layercam", closed_form=True)
def _layercam(r: ExplainRequest) -> torch.Tensor:
    """LayerCAM: positive gradients weight each position of each channel."""
    return _on_request(layercam, r)


def autograd_definition(name: str) -> Callable:
    """``(model, logits, features, classes) -> [B, h, w]``: the method through autograd even where
    a closed form exists (tests compare the two)."""
    def explain_by_autograd(model, logits, features, classes):
        return get(name)(ExplainRequest(_NoClosedForm(), None, logits, features, classes))
    return explain_by_autograd


class _NoClosedForm(nn.Module):
    """A stand-in model without a pooled linear head: the explainers take their autograd path."""
