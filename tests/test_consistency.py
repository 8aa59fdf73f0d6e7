"""Explanation consistency under the training transforms (semisup/eval/consistency.py): an
explainer consistent by construction scores r near 1, one of noise near 0; evaluate.py computes
it on a run's checkpoint and the report shows it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semisup.eval.consistency import DRAWS, agreement, consistency_scores, draw_transforms


def _images(n: int = 6, size: int = 64) -> torch.Tensor:
    """uint8 [n, 3, S, S] with a bright blob at a different place in each."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 60, (n, 3, size, size), generator=g, dtype=torch.uint8)
    for i in range(n):
        top, left = 4 + 7 * i, 40 - 6 * i
        images[i, :, top:top + 16, left:left + 20] = 230
    return images


def brightness(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A map computed from the image itself, at 1/4 of its side: consistent by construction."""
    return F.avg_pool2d(images.float().mean(1, keepdim=True), 4)[:, 0]


def noise(images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A map that ignores the image."""
    return torch.rand(len(images), 16, 16, generator=torch.Generator().manual_seed(len(images)))


def test_a_map_of_the_image_itself_is_consistent_and_a_map_of_noise_is_not():
    images, classes = _images(), torch.zeros(6, dtype=torch.long)
    r, iou = consistency_scores(images, classes, list(range(6)), brightness, (0.25, 1.0))
    assert r.shape == iou.shape == (6 * DRAWS,)
    assert r.mean() > 0.9 and iou.mean() > 0.6, (r, iou)
    r, iou = consistency_scores(images, classes, list(range(6)), noise, (0.25, 1.0))
    assert abs(r.mean()) < 0.15 and iou.mean() < 0.25, (r, iou)


def test_the_draws_are_fixed_per_image_and_the_flip_is_the_one_applied():
    assert draw_transforms(3, 64, (0.25, 1.0)) == draw_transforms(3, 64, (0.25, 1.0))
    assert draw_transforms(3, 64, (0.25, 1.0)) != draw_transforms(4, 64, (0.25, 1.0))
    flips = [params[4] for i in range(50) for params in draw_transforms(i, 64, (0.25, 1.0))]
    assert 0.35 < np.mean(flips) < 0.65  # half mirrored: the 'consistent' draw, never the released quarter


def test_agreement_of_equal_maps_is_perfect_and_of_a_constant_map_undefined():
    a = torch.rand(3, 8, 8)
    r, iou = agreement(a, 2 * a + 1)
    assert torch.allclose(r, torch.ones(3, dtype=torch.float64)) and torch.all(iou == 1)
    r, _ = agreement(torch.ones(1, 8, 8), a[:1])
    assert torch.isnan(r).all()


@pytest.mark.slow
def test_evaluate_computes_it_on_a_runs_checkpoint_and_the_report_shows_it(tmp_path, demo_cache, capsys):
    from semisup.config import parse_config
    from semisup.evaluate import main as evaluate
    from semisup.tools.report import limited_label_table, load_runs
    from semisup.train.trainer import train
    run_dir = tmp_path / "run"
    train(parse_config(["--labeled-fraction", "0.02", "--epochs", "1", "--max-steps", "2", "--demo-cache", demo_cache,
                        "--gallery", "0", "--max-eval-images", "32", "--run-dir", str(run_dir)]))
    assert evaluate(["--checkpoint", str(run_dir / "checkpoint.pt"), "--metrics", "top1,consistency", "--gallery", "0",
                     "--max-eval-images", "32"]) == 0
    out = capsys.readouterr().out
    assert "Cons. r" in out and "Cons. IoU" in out
    assert "not shown: CH, CH strict" in out and "--val-boxes" not in out  # CH was not asked for: no box blamed
    row = json.loads((run_dir / "eval.jsonl").read_text().splitlines()[-1])
    assert -1 <= row["consistency_r"] <= 1 and 0 <= row["consistency_iou"] <= 100
    assert row["consistency_pairs"] <= 32 * DRAWS and row["images"] == 32
    table = limited_label_table(load_runs([run_dir]))
    assert table.iloc[0]["Consist. r"] == f"{row['consistency_r']:.3f}"
    assert "Consist. r on 32 of 718 val images" in str(table.iloc[0]["Seeds"])
