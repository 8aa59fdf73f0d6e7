"""The backbone interface and its timm adapter: one registry, one trunk/head split, [B, C, h, w] features."""
import importlib.util
import math
import subprocess
import sys

import pytest
import torch

from semisup.config import ConfigError, parse_config
from semisup.errors import UserError
from semisup.method import cgc, explainers
from semisup.models.base import BACKBONES, CamBackbone, build_model, known_arch
from semisup.models.loading import CheckpointError, load_pretrained, load_run_model
from semisup.models.resnet import RESNET_ARCHS
from semisup.runfiles import RunFiles
from semisup.train.trainer import train

# timm's test_* models are its own tiny versions of each family (0.2-0.4 M parameters, no download).
TIMM_RESNET, TIMM_CONVNEXT, TIMM_VIT = "timm/test_resnet", "timm/test_convnext", "timm/test_vit"
needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed (optional)")


@needs_timm
@pytest.mark.slow
def test_a_timm_resnet_trains_through_the_entry_point_and_gets_content_heatmap(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    result = train(parse_config([
        "--arch", TIMM_RESNET, "--labeled-fraction", "0.05", "--max-steps", "3", "--batch-labeled", "16",
        "--batch-unlabeled", "16", "--max-eval-images", "32", "--gallery", "0", "--workers", "0",
        "--pretrained", "none", "--demo-cache", demo_cache, "--run-dir", str(run_dir)]))
    final = result["final"]
    assert math.isfinite(final["ch"]) and 0 <= final["top1"] <= 100, final
    assert result["steps"] == 3 and result["arch"] == TIMM_RESNET
    # The saved run loads back as the same backbone, and training moved trunk and head alike.
    model, cfg, _ = load_run_model(RunFiles(run_dir).checkpoint, {})
    torch.manual_seed(cfg.seed)  # the trainer seeds right before building the model
    start = build_model(cfg.arch, model.fc.out_features).state_dict()
    trained = model.state_dict()
    assert not torch.equal(trained["fc.weight"], start["fc.weight"])
    stem = model.trunk_keys()[0]  # the first conv's weight
    assert stem.startswith("body.") and not torch.equal(trained[stem], start[stem])


@pytest.mark.parametrize("arch", ["resnet_tiny", pytest.param(TIMM_CONVNEXT, marks=needs_timm)])
def test_head_parameters_are_fc_and_trunk_is_everything_else(arch):
    model = build_model(arch, 7)
    head, trunk = model.head_parameters(), model.trunk_parameters()
    assert [id(p) for p in head] == [id(p) for p in model.fc.parameters()]
    # Same order as named_parameters: the optimizer's groups (and momentum buffers) stay as they were.
    assert [id(p) for p in trunk + head] == [id(p) for p in model.parameters()]  # the head is the last module
    assert [id(p) for p in trunk] == [id(p) for n, p in model.named_parameters() if not n.startswith("fc.")]
    assert {id(p) for p in trunk} | {id(p) for p in head} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in trunk} & {id(p) for p in head}
    assert model.trunk_keys() == [k for k in model.state_dict() if not k.startswith("fc.")]


@needs_timm
def test_timm_features_at_content_heatmap_size_keep_the_stride_and_the_closed_form_cam():
    """Content Heatmap feeds whole images (shorter side 448, any aspect): the map follows the input."""
    for arch in (TIMM_RESNET, TIMM_CONVNEXT):
        model = build_model(arch, 5).eval()
        stride = model.body.feature_info[-1]["reduction"]
        for height, width in ((448, 448), (448, 608)):
            logits, features = model(torch.randn(2, 3, height, width))
            assert features.shape == (2, model.body.num_features, height // stride, width // stride), arch
        # pooled_linear_head is true of the adapter: the closed form equals autograd's Grad-CAM.
        classes = torch.tensor([1, 3])
        closed = explainers.gradcam(model, logits, features, classes)
        assert torch.allclose(closed, cgc.gradcam(logits, features, classes), atol=1e-6), arch


@needs_timm
def test_a_vit_gives_its_patch_tokens_on_the_grid_and_no_closed_form():
    model = build_model(TIMM_VIT, 5).eval()
    for height, width in ((64, 64), (64, 96)):
        x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
        logits, features = model(x)
        assert logits.shape == (2, 5) and features.shape == (2, model.body.num_features, height // 16, width // 16)
    assert explainers.pooled_linear_head(model) is None  # the class token's head: the autograd path
    # The map is the patch tokens entering the last block, row by row; the class token is left out.
    tokens = []
    hook = model.body.blocks[-1].norm1.register_forward_hook(lambda m, i, o: tokens.append(o.detach()))
    model.body.forward_features(x)
    hook.remove()
    torch.testing.assert_close(features, tokens[0][:, 1:].transpose(1, 2).reshape(features.shape))
    cam = explainers.explain("gradcam", model, x, logits, features, torch.tensor([1, 3]))
    assert cam.shape == (2, 4, 6) and cam.sum() > 0


@needs_timm
def test_a_model_without_a_feature_map_is_refused_in_one_line():
    with pytest.raises(UserError) as err:
        build_model("timm/mixer_s32_224", 5)  # MLP-Mixer: [B, patches, C] without a class token
    assert "mixer_s32_224" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="timm/no_such_net: timm .* has no model") as err:
        build_model("timm/no_such_net", 5)
    assert "\n" not in str(err.value)


def test_an_unknown_arch_is_a_config_error_that_mentions_timm():
    with pytest.raises(ConfigError, match=r"unknown architecture 'resnet5'; one of resnet101, .*timm/<name> \(a plugin"):
        parse_config(["--arch", "resnet5"])
    with pytest.raises(ConfigError, match="timm/<name>"):
        parse_config(["--arch", "timm/"])
    assert parse_config(["--arch", TIMM_CONVNEXT]).arch == TIMM_CONVNEXT


def test_the_config_accepts_exactly_the_registered_archs():
    """One list of --arch names, the registry: the package's ResNets and the timm family, and
    nothing the registry does not hold."""
    assert set(RESNET_ARCHS) <= set(BACKBONES.names()) and "timm/<name>" in BACKBONES.names()
    for arch in RESNET_ARCHS:
        assert parse_config(["--arch", arch]).arch == arch
    assert all(known_arch(a) for a in RESNET_ARCHS) and known_arch("timm/resnet18")
    assert not known_arch("timm/") and not known_arch("resnet5") and not known_arch("other/resnet18")
    assert issubclass(type(build_model("resnet_tiny", 3)), CamBackbone)


@pytest.mark.slow
def test_importing_the_backbones_does_not_import_timm():
    code = "import sys, semisup.models; assert 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_timm
def test_a_timm_state_dict_loads_into_the_trunk_strictly(tmp_path):
    source = build_model(TIMM_RESNET, 5)
    # timm's own files: the body's names, its classifier as "fc" (here a 1000-class one), maybe under "state_dict".
    state = {k[len("body."):]: v + 1 for k, v in source.state_dict().items() if k.startswith("body.")}
    state |= {"fc.weight": torch.zeros(1000, source.fc.in_features), "fc.bias": torch.zeros(1000)}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "timm.pth")
    model = build_model(TIMM_RESNET, 5)
    head = model.fc.weight.clone()
    report = load_pretrained(model, tmp_path / "timm.pth")
    assert report["loaded"] == len(model.trunk_keys()) and report["unused"] == 2
    assert all(torch.equal(model.state_dict()[f"body.{k}"], v) for k, v in state.items() if not k.startswith("fc."))
    assert torch.equal(model.fc.weight, head)  # the head starts fresh
    del state["conv1.0.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="1 of .* trunk tensors not found"):
        load_pretrained(build_model(TIMM_RESNET, 5), tmp_path / "partial.pth")
