"""Insertion / deletion AUC against a literal transcription of the released RISE code, and
evaluating weights that semisup/run.py did not write."""
import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from semisup.data import transforms as T
from semisup.eval import insertion as I
from semisup.evaluate import main as evaluate_main
from semisup.models.base import build_model
from semisup.models.loading import load_weights
from tests.released_causal_metric import CausalMetric, gkern
from tests.released_causal_metric import auc as released_auc

ROOT = Path(__file__).resolve().parents[1]


class Logits(nn.Module):
    """The released scripts' models return logits only."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)[0]


def tiny(seed: int = 0, classes: int = 5):
    torch.manual_seed(seed)
    return build_model("resnet_tiny", classes)


def test_blur_kernel_and_auc_are_the_released():
    assert torch.equal(I.blur_kernel(), gkern(11, 5))
    curve = np.random.default_rng(0).random(29)
    assert I.auc(curve) == pytest.approx(released_auc(curve), abs=1e-15)


@pytest.mark.parametrize("mode", ["ins", "del"])
def test_causal_curves_equal_the_released_causal_metric_with_ties_in_the_saliency(mode):
    model = tiny().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(5, 3, 16, 16, generator=g)
    saliency = np.round(np.random.default_rng(1).random((5, 16, 16)) * 3).astype(np.float32) / 3  # four levels: ties everywhere
    saliency[2] = 0  # an all-zero map: every pixel tied
    order = torch.from_numpy(np.flip(np.argsort(saliency.reshape(-1, 256), axis=1), axis=-1).copy())
    kernel = I.blur_kernel()
    substrate_fn = (lambda x: F.conv2d(x, gkern(11, 5), padding=5)) if mode == "ins" else torch.zeros_like
    with torch.no_grad():
        top = model(images)[0].argmax(1)
        ours = I.causal_curves(model, images, order, top, mode, 24, I.blur(images, kernel) if mode == "ins" else torch.zeros_like(images),
                               batch=7)  # 11 steps of 24 pixels (the last partial), chunks across images and steps
        scorer = nn.Sequential(Logits(model), nn.Softmax(dim=1)).eval()
        released = CausalMetric(scorer, mode, 24, substrate_fn, hw=256, n_classes=5).evaluate(images.clone(), saliency, batch_size=2)
    assert ours.shape == released.shape == (12, 5)
    np.testing.assert_allclose(ours, released, atol=1e-6, rtol=0)
    # One image per forward gives the same numbers.
    np.testing.assert_allclose(I.causal_curves(model, images, order, top, mode, 24, I.blur(images, kernel) if mode == "ins"
                                               else torch.zeros_like(images), batch=1), ours, atol=1e-7, rtol=0)


def test_saliency_is_pytorch_grad_cams_gradcam():
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    model = tiny()
    g = torch.Generator().manual_seed(3)
    images, labels = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    cam = grad_cam.GradCAM(model=Logits(model), target_layers=[model.layer4[-1]])  # it sets eval mode
    theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    ours, order = I.saliency_order(model.eval(), images, labels, I.InsertionSettings(size=32))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert order.shape == (4, 32 * 32)


def test_the_train_mode_saliency_pass_moves_batchnorm_once_whatever_the_explainer_forwards(monkeypatch):
    """The released saliency pass runs in train mode: its one forward moves BatchNorm's running
    statistics. An explainer that forwards again (Score-CAM, a recomputed graph) gives its maps
    but leaves the statistics as Grad-CAM's pass left them."""
    from semisup.method.explainers import get, register_explainer
    from semisup.registry import EXPLAINERS
    EXPLAINERS.names()  # the package's loaded, then a copy: the test's explainer leaves with the test
    monkeypatch.setattr(EXPLAINERS, "_entries", dict(EXPLAINERS._entries))

    @register_explainer("test-forwarding-gradcam")
    def forwarding(request):
        request.forward = None
        request.model(request.images)  # an extra train-mode forward: it would move the statistics
        return get("gradcam")(request)

    model = tiny()
    g = torch.Generator().manual_seed(5)
    images, labels = torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])
    moved = {}
    for name in ("gradcam", "test-forwarding-gradcam"):
        net = copy.deepcopy(model).train()
        I.saliency_order(net, images, labels, I.InsertionSettings(size=32, explainer=name, order="stable"))
        moved[name] = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k}
    assert moved["gradcam"]["bn1.num_batches_tracked"] == 1  # the pass's own forward moved them once
    for key, value in moved["gradcam"].items():
        torch.testing.assert_close(moved["test-forwarding-gradcam"][key], value, rtol=0, atol=0)


def released_input(images: torch.Tensor) -> torch.Tensor:
    """The released scripts' input: PIL images through torchvision's ToTensor, then Normalize."""
    from PIL import Image
    from torchvision import transforms as TV
    to_input = TV.Compose([TV.ToTensor(), TV.Normalize(T.IMAGENET_MEAN, T.IMAGENET_STD)])
    return torch.stack([to_input(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])


def test_the_input_arithmetic_is_torchvisions_to_tensor_then_normalize_bit_for_bit():
    # Every uint8 value in every channel, then random images in both memory layouts.
    ramp = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    images = torch.cat([ramp, torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8,
                                             generator=torch.Generator().manual_seed(0))])
    released = released_input(images)
    assert torch.equal(T.normalize(images), released)
    assert torch.equal(T.normalize(images, channels_last=True), released)
    # The arithmetic this replaced, (x - 255 mean) / (255 std), differs in the last bit: the test can tell.
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) * 255 for v in (T.IMAGENET_MEAN, T.IMAGENET_STD))
    assert not torch.equal((images.float() - mean) / std, released)


def test_insertion_auc_per_image_equals_the_released_pipeline():
    pytest.importorskip("cv2")
    model = tiny(seed=3)
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (6,), generator=g)
    settings = I.InsertionSettings(size=64, subset=6, batch=6)
    ours = I._subset_curves(copy.deepcopy(model), images, labels, settings, torch.device("cpu"), ("iauc", "dauc"))
    net = copy.deepcopy(model).train()
    x = released_input(images)
    saliency = vendored_gradcam(net, x, labels.tolist())
    scorer = nn.Sequential(Logits(net), nn.Softmax(dim=1)).eval()
    for mode, name, substrate_fn in (("ins", "iauc", lambda z: F.conv2d(z, gkern(11, 5), padding=5)),
                                     ("del", "dauc", torch.zeros_like)):
        with torch.no_grad():
            scores = CausalMetric(scorer, mode, 64 * 8, substrate_fn, hw=64 * 64, n_classes=5).evaluate(
                x.clone(), saliency, batch_size=100)
        for i in range(len(images)):
            assert I.auc(ours[name][:, i]) == pytest.approx(released_auc(np.asarray(scores)[:, i]), abs=1e-6), (name, i)


def vendored_gradcam(net, x, targets):
    """RISE/pytorch_grad_cam (the CGC repository's copy): BaseCAM.forward with GradCAM's weights."""
    import cv2
    activations, gradients = [], []
    layer = net.layer4[-1]
    hooks = [layer.register_forward_hook(lambda m, i, o: activations.append(o.detach().clone())),
             layer.register_full_backward_hook(lambda m, gi, go: gradients.insert(0, go[0].detach()))]
    output = net(x)[0]
    net.zero_grad()
    loss = 0
    for i in range(len(targets)):
        loss = loss + output[i, targets[i]]
    loss.backward(retain_graph=True)
    for h in hooks:
        h.remove()
    a, grads = activations[-1].numpy(), gradients[-1].numpy()
    cam = np.maximum((np.mean(grads, axis=(2, 3))[:, :, None, None] * a).sum(axis=1), 0)
    result = []
    for img in cam:
        img = cv2.resize(img, x.shape[-2:][::-1])
        img = img - np.min(img)
        img = img / (np.max(img) + 1e-8)
        result.append(img)
    return np.float32(result)


def test_insertion_metrics_reproduce_the_released_script_with_its_train_mode_saliency():
    pytest.importorskip("cv2")
    model = tiny()
    g = torch.Generator().manual_seed(4)
    # 48 px: 3 x 3 heatmaps (a 1 x 1 one is constant, and min-max normalising it amplifies rounding)
    images = torch.randint(0, 255, (10, 3, 48, 48), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (10,), generator=g)
    settings = I.InsertionSettings(size=48, subset=5, batch=9)  # 8 rows of pixels a step, as released: 7 scores
    before = copy.deepcopy(model.state_dict())
    ours = I.insertion_metrics(model, [(images[:4], labels[:4]), (images[4:], labels[4:])], settings, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is left as it was
    # The released script: per subset, net.train(); Grad-CAM (which moves BatchNorm's running
    # statistics); the eval-mode softmax model scores; model.train() again.
    net = copy.deepcopy(model)
    results = {"ins": [], "del": []}
    for part in (slice(0, 5), slice(5, 10)):
        x = released_input(images[part])
        net.train()
        saliency = vendored_gradcam(net, x, labels[part].tolist())
        scorer = nn.Sequential(Logits(net), nn.Softmax(dim=1)).eval()
        for mode, substrate_fn in (("ins", lambda z: F.conv2d(z, gkern(11, 5), padding=5)), ("del", torch.zeros_like)):
            with torch.no_grad():
                scores = CausalMetric(scorer, mode, 48 * 8, substrate_fn, hw=48 * 48, n_classes=5).evaluate(x.clone(), saliency, batch_size=100)
            results[mode].append(released_auc(scores.mean(1)))
        scorer.train()
    assert ours["insertion_images"] == 10
    assert ours["iauc"] == pytest.approx(100 * np.mean(results["ins"]), abs=1e-6)
    assert ours["dauc"] == pytest.approx(100 * np.mean(results["del"]), abs=1e-6)
    # Subsets do not depend on how the loader batches the images: five subsets of two from one batch of ten
    # or from ten batches of one.
    small = I.InsertionSettings(size=48, subset=2, batch=9)
    whole = I.insertion_metrics(model, [(images, labels)], small, torch.device("cpu"))
    singles = I.insertion_metrics(model, [(images[i:i + 1], labels[i:i + 1]) for i in range(10)], small, torch.device("cpu"))
    assert whole["iauc"] == pytest.approx(singles["iauc"], abs=1e-9) and whole["dauc"] == pytest.approx(singles["dauc"], abs=1e-9)
    # The named departure: the saliency in eval mode gives another number here.
    other = I.insertion_metrics(model, [(images, labels)], I.InsertionSettings(size=48, subset=5, saliency_mode="eval"),
                                torch.device("cpu"))
    assert other["iauc"] != pytest.approx(ours["iauc"], abs=1e-9)


def tree(tmp_path):
    from tests.imagenet_tree import make_tree
    root = tmp_path / "imagenet"
    make_tree(root, bad=False)
    return root


def evaluate_args(root, weights, arch, *extra):
    return ["--weights", str(weights), "--arch", arch, "--data", str(root), "--val-boxes", str(root / "boxes"), "--image-size", "32",
            "--resize-size", "36", "--ch-short-side", "32", "--workers", "0", "--gallery", "0", *extra]


@pytest.mark.slow
def test_torchvision_and_released_cgc_files_evaluate_with_every_tensor_loaded(tmp_path, capsys):
    import torchvision
    root = tree(tmp_path)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=3)
    files = {"torchvision.pth": reference.state_dict(),
             "released_cgc.pth.tar": {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "epoch": 90}}
    # The released 1 % models: SwAV names, the classifier in projection_head.
    swav = {f"module.{k.replace('fc.', 'projection_head.')}": v for k, v in reference.state_dict().items()}
    files["released_cgc_swav.pth.tar"] = {"state_dict": swav}
    for name, content in files.items():
        torch.save(content, tmp_path / name)
        model, report = load_weights(tmp_path / name, "resnet18")
        assert report["head"] and report["num_classes"] == 3
        assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items()), name
        out = tmp_path / f"eval-{name}"
        assert evaluate_main(evaluate_args(root, tmp_path / name, "resnet18", "--metrics", "top1,ch,iauc", "--out", str(out))) == 0
        row = json.loads((out / "eval.jsonl").read_text().splitlines()[-1])
        assert {"top1", "ch", "iauc", "dauc"} & set(row) == {"top1", "ch", "iauc"} and 0 <= row["iauc"] <= 100
    assert "IAUC" in capsys.readouterr().out
    # A SwAV trunk (no head): kNN and the released SwAV CH only.
    trunk = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    trunk["module.projection_head.0.weight"] = torch.zeros(8, 512)
    torch.save(trunk, tmp_path / "swav_trunk.pth")
    assert load_weights(tmp_path / "swav_trunk.pth", "resnet18")[1]["head"] is False
    assert evaluate_main(evaluate_args(root, tmp_path / "swav_trunk.pth", "resnet18", "--metrics", "top1")) == 2
    assert "no classification head" in capsys.readouterr().err


@pytest.mark.slow
def test_a_file_of_another_architecture_is_refused_in_one_line(tmp_path):
    import torchvision
    root = tree(tmp_path)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "r18.pth")
    out = subprocess.run([sys.executable, str(ROOT / "semisup" / "evaluate.py"), *evaluate_args(root, tmp_path / "r18.pth", "resnet34")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "is not a resnet34" in out.stderr and "--arch" in out.stderr
    # Every kind of disagreement counted (resnet34's extra blocks), not only the first kind found.
    assert re.search(r"\d+ of the \d+ model tensors missing, e\.g\. layer1\.2\.", out.stderr), out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    bad = subprocess.run([sys.executable, str(ROOT / "semisup" / "evaluate.py"), *evaluate_args(root, tmp_path / "r18.pth", "resnet18"),
                          "--metrics", "top1,auc"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown auc" in bad.stderr and "Traceback" not in bad.stderr
