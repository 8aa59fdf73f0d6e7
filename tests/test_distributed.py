"""Two processes with the gloo backend on CPU."""
import torch

from semisup import cgc
from tests.dist_utils import _loss_worker, _train_worker, loss_inputs, spawn


def test_two_process_gloo_run_ends_with_identical_weights(tmp_path, demo_cache):
    args = ["--demo-cache", demo_cache, "--run-dir", str(tmp_path / "run"), "--labeled-fraction", "0.05", "--epochs", "1",
            "--batch-labeled", "32", "--batch-unlabeled", "32", "--max-eval-images", "64", "--gallery", "0", "--global-negatives"]
    spawn(_train_worker, args, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["result"]["steps"] == 22  # 718 labeled // 32 global
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]["conv1.weight"]
    assert not torch.equal(first, torch.zeros_like(first))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "labeled 32 global / 16 per process, unlabeled 32 global / 16 per process" in log


def test_global_negatives_make_the_loss_independent_of_the_process_count(tmp_path):
    spawn(_loss_worker, str(tmp_path))
    parts = [torch.load(tmp_path / f"loss{r}.pt") for r in range(2)]
    cam, cam_aug, boxes, flips = loss_inputs()
    cam.requires_grad_(), cam_aug.requires_grad_()
    reference = cgc.cgc_loss(cam_aug, cam, boxes, flips)
    reference.backward()
    # DDP averages over processes: the mean of the per-process losses and gradients is the
    # one-process loss over the whole batch.
    torch.testing.assert_close((parts[0]["loss"] + parts[1]["loss"]) / 2, reference.detach())
    torch.testing.assert_close(torch.cat([p["aug_grad"] for p in parts]) / 2, cam_aug.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([p["cam_grad"] for p in parts]) / 2, cam.grad, rtol=1e-5, atol=1e-7)
