"""Two processes with the gloo backend on CPU."""
import pytest
import torch

from semisup.method import cgc
from semisup.tools.reference import released_cgc_loss
from tests.dist_utils import _loss_worker, _train_worker, loss_inputs, spawn


@pytest.mark.slow
def test_two_process_gloo_run_ends_with_identical_weights(tmp_path, demo_cache):
    args = ["--demo-cache", demo_cache, "--run-dir", str(tmp_path / "run"), "--labeled-fraction", "0.05", "--epochs", "1",
            "--batch-labeled", "32", "--batch-unlabeled", "32", "--max-eval-images", "64", "--gallery", "0"]
    spawn(_train_worker, args, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["result"]["steps"] == 23  # ceil(ceil(719 labeled / 2) / 16): the last batch partial
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]["conv1.weight"]
    assert not torch.equal(first, torch.zeros_like(first))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "labeled 32 global / 16 per process, unlabeled 32 global / 16 per process" in log


@pytest.mark.slow
def test_group_negatives_give_the_same_loss_for_one_and_two_processes(tmp_path):
    spawn(_loss_worker, str(tmp_path))
    parts = [torch.load(tmp_path / f"loss{r}.pt") for r in range(2)]
    cam, cam_aug, boxes, flips, pixel = loss_inputs()
    for group in (4, 8):  # a group inside each process, and one spanning both
        cam_, aug_ = cam.clone().requires_grad_(), cam_aug.clone().requires_grad_()
        reference = cgc.cgc_loss(aug_, cam_, boxes, flips, group_size=group)
        reference.backward()
        # The released code: one replica per group, the replicas' losses averaged.
        released = released_cgc_loss(cam_aug, cam, pixel, flips.tolist(), group_size=group)
        torch.testing.assert_close(reference.detach(), released, rtol=1e-5, atol=0)
        # DDP averages over processes: the mean of the per-process losses and gradients is the
        # one-process loss over the whole batch.
        torch.testing.assert_close((parts[0][group]["loss"] + parts[1][group]["loss"]) / 2, reference.detach(), rtol=1e-6, atol=1e-7)
        for key, full in (("aug_grad", aug_.grad), ("cam_grad", cam_.grad)):
            split = torch.cat([p[group][key] for p in parts]) / 2
            assert (split - full).norm() <= 1e-5 * full.norm(), (group, key)


def test_batchnorm_groups_follow_the_released_replicas():
    from semisup.models.replicas import Geometry, geometry
    assert geometry(128, 64, world=8) == Geometry(2, 1, 4)  # 8 GPUs x 16: a replica is 4 processes (SyncBatchNorm)
    assert geometry(128, 64, world=2) == Geometry(2, 1, 1)  # the released geometry: one replica per process
    assert geometry(128, 64, world=1) == Geometry(2, 2, 1)  # one GPU: two replicas of 64 inside the process
    assert geometry(256, 64, world=4) == Geometry(4, 1, 1)  # full supervision as released: 4 GPUs x 64
    assert geometry(128, 64, world=3) == Geometry(2, 1, 3)  # no whole replicas: one group over all processes
