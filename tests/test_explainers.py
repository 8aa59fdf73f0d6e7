"""Heatmap methods over one interface: Grad-CAM and Grad-CAM++, closed form and autograd, and
the reference library's Grad-CAM++."""
import numpy as np
import pytest
import torch

from semisup.config import EXPLAINER_NAMES, parse_config
from semisup.eval import insertion as I
from semisup.method import explainers
from semisup.models.base import build_model
from semisup.train.trainer import train
from tests.test_insertion import Logits


def forward(seed: int = 0, arch: str = "resnet_tiny", classes: int = 5):
    torch.manual_seed(seed)
    model = build_model(arch, classes)
    x = torch.randn(3, 3, 64, 64)
    logits, features = model(x)
    return model, logits, features, torch.tensor([0, 2, 4])


def test_the_config_offers_every_registered_explainer():
    assert set(EXPLAINER_NAMES) == set(explainers.EXPLAINERS)


@pytest.mark.parametrize("name", sorted(explainers.EXPLAINERS))
@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet18"])
def test_closed_form_equals_the_autograd_definition_in_value_and_gradient(name, arch):
    model, logits, features, classes = forward(arch=arch)
    assert explainers.pooled_linear_head(model) is not None  # the closed form is what is compared
    closed = explainers.get(name)(model, logits, features, classes)
    defined = explainers.autograd_definition(name)(model, logits, features, classes)
    assert closed.shape == features.shape[:1] + features.shape[2:] and closed.max() > 0
    torch.testing.assert_close(closed, defined, rtol=1e-4, atol=1e-7)
    # Trainable: the same gradient reaches the features both ways (for a linear head the
    # features' gradient does not depend on them), and the closed form reaches the head.
    weights = torch.rand(closed.shape, generator=torch.Generator().manual_seed(1))
    g_closed, g_head = torch.autograd.grad((closed * weights).sum(), [features, model.fc.weight], retain_graph=True)
    (g_defined,) = torch.autograd.grad((defined * weights).sum(), features)
    torch.testing.assert_close(g_closed, g_defined, rtol=1e-4, atol=1e-8)
    assert g_head.abs().sum() > 0


def test_gradcam_plus_plus_is_not_gradcam():
    model, logits, features, classes = forward()
    plus = explainers.gradcam_plus_plus(model, logits, features, classes)
    plain = explainers.gradcam(model, logits, features, classes)
    unit = lambda m: m / m.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    assert (unit(plus) - unit(plain)).abs().max() > 1e-3


def test_gradcam_plus_plus_is_pytorch_grad_cams():
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    model = build_model("resnet_tiny", 5)
    g = torch.Generator().manual_seed(3)
    images, labels = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    cam = grad_cam.GradCAMPlusPlus(model=Logits(model), target_layers=[model.layer4[-1]])  # it sets eval mode
    theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    # The insertion metric's saliency scales and resizes as the library does.
    ours, _ = I.saliency_order(model.eval(), images, labels, I.InsertionSettings(size=32, explainer="gradcam++"))
    assert np.abs(theirs).max() > 0
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_a_run_with_gradcam_plus_plus_trains_and_evaluates(tmp_path, demo_cache):
    args = ["--labeled-fraction", "0.05", "--max-steps", "3", "--batch-labeled", "16", "--batch-unlabeled", "16", "--workers", "0",
            "--max-eval-images", "32", "--gallery", "0", "--demo-cache", demo_cache]
    plain = train(parse_config([*args, "--run-dir", str(tmp_path / "gradcam")]))
    plus = train(parse_config([*args, "--run-dir", str(tmp_path / "plus"), "--explainer", "gradcam++"]))
    assert np.isfinite(plus["final"]["ch"]) and np.isfinite(plus["final"]["train_consistency"])
    assert plus["final"]["train_consistency"] != plain["final"]["train_consistency"]
    assert plus["weights_sha256"] != plain["weights_sha256"]
