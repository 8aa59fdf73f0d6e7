"""The embedded contextual-bias demo dataset."""
import numpy as np
import pytest
import torch

from semisup.data.demo import CUE_COLOURS, load_demo
from semisup.models.base import build_model


@pytest.mark.slow
def test_demo_is_deterministic_cached_and_well_formed(tmp_path, demo_cache):
    data = load_demo(demo_cache)
    again = load_demo(demo_cache)  # from the cache
    assert np.array_equal(data.train.images, again.train.images)
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1:] == (64, 64, 3)
    assert len(data.classes) == 10 and set(np.unique(data.train.labels)) == set(range(10))
    boxes = data.val.boxes
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()
    assert boxes.min() >= 0 and boxes[:, 2:].max() <= 64
    # The context cue is class-correlated in training only.
    assert 0.7 < data.train.cue_matches.mean() < 0.9
    assert not data.val.cue_matches.any()
    # Same seed, same data, built afresh elsewhere; another seed, other data.
    fresh = load_demo(tmp_path / "a", seed=0, train_renders=1, val_renders=1)
    other = load_demo(tmp_path / "b", seed=1, train_renders=1, val_renders=1)
    rebuilt = load_demo(tmp_path / "c", seed=0, train_renders=1, val_renders=1)
    assert np.array_equal(fresh.val.images, rebuilt.val.images)
    assert not np.array_equal(fresh.val.images, other.val.images)


def test_validation_cue_colours_are_uninformative(demo_cache):
    data = load_demo(demo_cache)
    assert len(CUE_COLOURS) == 10
    # Train and validation use disjoint digit renders: no identical image in both.
    train_hashes = {img.tobytes() for img in data.train.images[:2000]}
    assert not any(img.tobytes() in train_hashes for img in data.val.images)


def test_demo_images_give_a_last_block_of_at_least_4x4():
    _, features = build_model("resnet_tiny", 10)(torch.zeros(1, 3, 64, 64))
    assert features.shape[-2:] == (4, 4)
