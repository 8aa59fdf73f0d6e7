"""The demo's SwAV-style pretraining."""
import numpy as np
import torch

from semisup.data import ArraySource, StreamSampler, TrainDataset
from semisup.models import build_model, load_pretrained
from semisup.pretrain import colour_jitter, paired_views, pretrain, save_swav_layout, sinkhorn


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


def test_pretraining_writes_a_swav_layout_checkpoint_that_loads(tmp_path, demo_cache):
    model, head = pretrain(steps=2, batch=8, lr=0.05, seed=0, demo_cache=demo_cache)
    save_swav_layout(model, head, tmp_path / "swav.pth")
    keys = torch.load(tmp_path / "swav.pth", weights_only=True).keys()
    assert all(k.startswith("module.") for k in keys) and any(".prototypes." in f".{k}" for k in keys)
    target = build_model("resnet_tiny", 10)
    report = load_pretrained(target, tmp_path / "swav.pth")
    assert report["loaded"] == len(target.trunk_keys())
    assert torch.equal(target.layer4[0].conv1.weight, model.layer4[0].conv1.weight)


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
