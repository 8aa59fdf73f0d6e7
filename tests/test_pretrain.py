"""The demo's self-supervised pretraining (semisup/tools/pretrain.py)."""
import numpy as np
import pytest
import torch

from semisup.data.datasets import ArraySource, StreamSampler, TrainDataset
from semisup.models.base import build_model
from semisup.models.loading import load_pretrained
from semisup.tools.pretrain import (
    colour_jitter,
    contrastive_loss,
    paired_views,
    pretrain,
    rotate_hue,
    save_swav_layout,
    sinkhorn,
)


def test_sinkhorn_codes_are_equipartitioned_distributions():
    scores = torch.randn(64, 8) * 0.3
    scores[:, 0] += 1.0  # every sample prefers prototype 0 ...
    codes = sinkhorn(scores)
    torch.testing.assert_close(codes.sum(1), torch.ones(64), rtol=1e-4, atol=1e-4)
    # ... yet the batch is spread over all prototypes (no collapse onto one).
    assert codes.sum(0).max() < 2 * 64 / 8


def test_colour_jitter_keeps_range_and_changes_colour():
    images = torch.rand(8, 3, 16, 16)
    out = colour_jitter(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images)


@pytest.mark.parametrize("objective", ["contrastive", "swav"])
def test_pretraining_writes_a_swav_layout_checkpoint_that_loads(tmp_path, demo_cache, objective):
    model, head, probes = pretrain(steps=2, batch=8, lr=0.05, seed=0, demo_cache=demo_cache, objective=objective, probe_every=2)
    assert [step for step, _ in probes] == [2] and 0 <= probes[0][1] <= 100
    save_swav_layout(model, head, tmp_path / "swav.pth")
    keys = torch.load(tmp_path / "swav.pth", weights_only=True).keys()
    assert all(k.startswith("module.") for k in keys) and any(k.startswith("module.projection_head.") for k in keys)
    assert any(k.startswith("module.prototypes.") for k in keys) == (objective == "swav")
    target = build_model("resnet_tiny", 10)
    report = load_pretrained(target, tmp_path / "swav.pth")
    assert report["loaded"] == len(target.trunk_keys()) and report["manifest"] is None
    assert torch.equal(target.layer4[0].conv1.weight, model.layer4[0].conv1.weight)


def test_contrastive_loss_rewards_matching_views():
    z = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    matched = contrastive_loss(torch.cat([z, z]), 0.2)
    shuffled = contrastive_loss(torch.cat([z, z.roll(1, 0)]), 0.2)
    assert matched < shuffled and matched < torch.log(torch.tensor(31.0))


def test_hue_rotation_keeps_brightness_and_turns_colours():
    images = torch.rand(4, 3, 8, 8)
    luma = lambda x: (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    turned = rotate_hue(images, torch.full((4,), 2.0))
    torch.testing.assert_close(luma(turned), luma(images), rtol=1e-4, atol=1e-4)
    assert (turned - images).abs().mean() > 0.05
    torch.testing.assert_close(rotate_hue(turned, torch.full((4,), -2.0)), images, rtol=1e-4, atol=1e-4)


def test_the_two_views_are_different_augmentations_of_the_same_images():
    # Channel 0 names the image (constant value = index); channel 1 is a ramp that shows the crop.
    n, size = 40, 32
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    images[..., 0] = np.arange(n).reshape(n, 1, 1) * 5
    images[..., 1] = np.linspace(0, 255, size).astype(np.uint8).reshape(1, 1, size)
    dataset = TrainDataset(ArraySource(images, np.zeros(n)), np.arange(n), size, size, 0.25, crop=True, pair=False)
    indices, view_a, view_b = next(paired_views(dataset, StreamSampler(n, 16, seed=0, stream=10)))
    assert torch.equal(view_a[:, 0, 0, 0], indices.to(torch.uint8) * 5) and torch.equal(view_b[:, 0, 0, 0], view_a[:, 0, 0, 0])
    assert (view_a[:, 1] != view_b[:, 1]).flatten(1).any(1).float().mean() > 0.8  # different crops / flips
