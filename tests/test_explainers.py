"""Heatmap methods over one interface: Grad-CAM, Grad-CAM++ and LayerCAM, closed form and autograd,
the reference library's Grad-CAM++, and any of its methods through the evaluation adapter."""
import numpy as np
import pytest
import torch

from semisup.config import ConfigError, parse_config
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


DIFFERENTIABLE = [name for name, e in explainers.EXPLAINERS.items() if e.differentiable]


def test_the_registry_is_the_only_list_of_names():
    assert {"gradcam", "gradcam++", "layercam"} <= set(DIFFERENTIABLE)
    assert parse_config(["--explainer", "layercam"]).explainer == "layercam"
    with pytest.raises(ConfigError, match="'nope' is not one of gradcam, gradcam\\+\\+, layercam, pgc/<name>"):
        parse_config(["--explainer", "nope"])
    # An evaluation-only method cannot train the consistency loss.
    with pytest.raises(ConfigError, match="not differentiable"):
        parse_config(["--explainer", "pgc/ScoreCAM"])
    assert parse_config(["--explainer", "pgc/ScoreCAM", "--lambda", "0"]).explainer == "pgc/ScoreCAM"


@pytest.mark.parametrize("name", DIFFERENTIABLE)
@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet18"])
def test_closed_form_equals_the_autograd_definition_in_value_and_gradient(name, arch):
    model, logits, features, classes = forward(arch=arch)
    assert explainers.pooled_linear_head(model) is not None  # the closed form is what is compared
    closed = explainers.explain(name, model, None, logits, features, classes)
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


@pytest.mark.slow
def test_a_run_with_gradcam_plus_plus_trains_and_evaluates(tmp_path, demo_cache):
    args = ["--labeled-fraction", "0.05", "--max-steps", "3", "--batch-labeled", "16", "--batch-unlabeled", "16", "--workers", "0",
            "--max-eval-images", "32", "--gallery", "0", "--demo-cache", demo_cache]
    plain = train(parse_config([*args, "--run-dir", str(tmp_path / "gradcam")]))
    plus = train(parse_config([*args, "--run-dir", str(tmp_path / "plus"), "--explainer", "gradcam++"]))
    assert np.isfinite(plus["final"]["ch"]) and np.isfinite(plus["final"]["train_consistency"])
    assert plus["final"]["train_consistency"] != plain["final"]["train_consistency"]
    assert plus["weights_sha256"] != plain["weights_sha256"]


def test_layercam_weighs_positions_by_positive_gradients():
    model, logits, features, classes = forward()
    layer = explainers.layercam(explainers._NoClosedForm(), logits, features, classes)
    (grads,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), features)
    by_hand = torch.relu((torch.relu(grads) * features).sum(1))
    torch.testing.assert_close(layer, by_hand)
    # For a linear head every gradient of class c is W_c / (h w): LayerCAM keeps only W_c > 0.
    assert not torch.allclose(layer, explainers.gradcam(model, logits, features, classes))


def test_an_autograd_explainer_recomputes_the_forward_when_the_caller_kept_no_graph():
    model, _, _, classes = forward()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with_graph = explainers.explain("gradcam", explainers._NoClosedForm(), x, *model(x), classes)
    with torch.no_grad():
        logits, features = model(x)
    request = explainers.ExplainRequest(explainers._NoClosedForm(), x, logits, features, classes, forward=model)
    torch.testing.assert_close(explainers.get("gradcam")(request), with_graph)


def test_any_pytorch_grad_cam_method_through_one_adapter():
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    torch.manual_seed(0)
    model = build_model("resnet_tiny", 5).train()
    images, labels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 3])
    with torch.no_grad():
        logits, features = model(images)
    ours = explainers.explain("pgc/ScoreCAM", model, images, logits, features, labels)
    assert model.training and ours.shape == (2, 32, 32)  # the library's eval mode is undone
    with grad_cam.ScoreCAM(model=Logits(model), target_layers=[model.layer4]) as cam:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)
    with pytest.raises(Exception, match="no such method; one of .*pgc/ScoreCAM"):
        explainers.explain("pgc/NoSuchCAM", model, images, logits, features, labels)
