"""Resume after a kill, non-finite losses, and the other rows of the published tables."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from semisup.config import Config, parse_config
from semisup.data.boxes import load_boxes
from semisup.train.trainer import NonFiniteLoss, RunDirError, train
from tests.run_helpers import checkpoint_step, wait_for_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--labeled-fraction", "0.05", "--epochs", "2", "--batch-labeled", "32", "--batch-unlabeled", "32",
         "--max-eval-images", "96", "--gallery", "0", "--eval-every", "1"]


def run_cmd(args):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    return [sys.executable, str(ROOT / "semisup" / "run.py"), *args], env



@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path, demo_cache):
    # 290 labeled images at 32 a step: 10 steps an epoch (the last of 2 images), 20 in all.
    args = SHORT + ["--demo-cache", demo_cache, "--checkpoint-every", "3", "--labeled-fraction", "0.02", "--log-every", "1"]
    cmd, env = run_cmd(args + ["--run-dir", str(tmp_path / "straight")])
    subprocess.run(cmd, env=env, check=True, capture_output=True)

    cmd, env = run_cmd(args + ["--run-dir", str(tmp_path / "killed")])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_checkpoint(tmp_path / "killed" / "checkpoint.pt", 3)
    # Killed after it logged steps its checkpoint does not hold: the resumed run logs them again.
    wait_for_progress_beyond_checkpoint(tmp_path / "killed")
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, as with a node failure
    proc.wait()
    step = checkpoint_step(tmp_path / "killed" / "checkpoint.pt")
    assert 0 < step < 20 and not (tmp_path / "killed" / "final.json").exists(), step
    logged_before = max(scalar_steps(tmp_path / "killed")["train/ce"])
    subprocess.run(cmd, env=env, check=True, capture_output=True)  # the same command resumes
    # TensorBoard shows every step once: what the killed run logged after its checkpoint is purged.
    steps = scalar_steps(tmp_path / "killed")
    assert logged_before > step  # the killed run had logged past its checkpoint
    assert steps["train/ce"] == list(range(1, 21)) and steps["val/top1"] == [10, 20]
    assert all(len(v) == len(set(v)) for v in steps.values()), steps
    assert all(tag.split("/")[0] in ("train", "lr", "data", "system", "val", "hparam") for tag in steps), sorted(steps)

    straight = pd.read_csv(tmp_path / "straight" / "metrics.csv").drop(columns="eval_seconds")
    resumed = pd.read_csv(tmp_path / "killed" / "metrics.csv").drop(columns="eval_seconds")
    assert list(resumed["step"]) == [10, 20]
    pd.testing.assert_frame_equal(straight, resumed)
    assert "resumed from" in (tmp_path / "killed" / "train.log").read_text()


def wait_for_progress_beyond_checkpoint(run_dir: Path, timeout_s: float = 120) -> None:
    import json
    import time
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if json.loads((run_dir / "progress.json").read_text())["step"] > checkpoint_step(run_dir / "checkpoint.pt") >= 3:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{run_dir} did not log past its checkpoint")


def scalar_steps(run_dir: Path) -> dict[str, list[int]]:
    """{tag: steps} of the scalars TensorBoard shows for a run (its purge rules applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_resume_with_other_settings_is_refused(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("cgc_weight: 0.25\n")
    torch.save(dict(step=1), run_dir / "checkpoint.pt")
    with pytest.raises(RunDirError, match="different settings.*cgc_weight"):
        train(parse_config(SHORT + ["--demo-cache", demo_cache, "--run-dir", str(run_dir), "--lambda", "1.0"]))


def test_non_finite_loss_stops_with_the_step_and_keeps_a_finite_checkpoint(tmp_path, demo_cache):
    args = SHORT + ["--demo-cache", demo_cache, "--run-dir", str(tmp_path / "nan"), "--lr-trunk", "1e12", "--lr-head", "1e12",
                    "--log-every", "1", "--checkpoint-every", "1"]
    with pytest.raises(NonFiniteLoss, match=r"non-finite (loss|weights) at step \d+"):
        train(parse_config(args))
    state = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("mode, method", [(["--labeled-fraction", "1.0"], "cgc"), (["--consistency", "l2"], "gcc")])
def test_full_supervision_and_gcc_rows(tmp_path, demo_cache, mode, method):
    args = ["--epochs", "1", "--batch-labeled", "64", "--batch-unlabeled", "32", "--max-eval-images", "64", "--gallery", "0",
            "--labeled-fraction", "0.05", "--demo-cache", demo_cache, "--run-dir", str(tmp_path / "run"), *mode]
    cfg = parse_config(args + ["--max-steps", "6"])
    result = train(cfg)
    assert result["method"] == method and result["steps"] == 6
    assert result["final"]["train_consistency"] > 0
    if cfg.full_supervision:  # CGC on the labeled images themselves, no unlabeled stream
        assert result["final"]["unlabeled_images"] == 0 and result["final"]["labeled_images"] == 6 * 64


def test_cub_bounding_boxes(tmp_path):
    (tmp_path / "images.txt").write_text("1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg\n2 002.Laysan/L_1.jpg\n")
    (tmp_path / "bounding_boxes.txt").write_text("1 60.0 27.0 325.0 304.0\n2 1 2 3 4\n")
    boxes = load_boxes(tmp_path / "bounding_boxes.txt")
    np.testing.assert_array_equal(boxes["Black_Footed_Albatross_0046_18"].of_class("001.Black_footed_Albatross"), [[60, 27, 385, 331]])
    (tmp_path / "bounding_boxes.txt").write_text("1 60.0 27.0\n")
    with pytest.raises(ValueError, match="bounding_boxes.txt:1"):
        load_boxes(tmp_path / "bounding_boxes.txt")


def test_full_supervision_sums_three_cross_entropies_and_explains_the_predicted_class(tmp_path, demo_cache):
    import dataclasses

    import torch.nn.functional as F

    from semisup.data import transforms as T
    from semisup.train.trainer import run_training
    args = ["--labeled-fraction", "1.0", "--batch-labeled", "16", "--demo-cache", demo_cache, "--dry-run", "--lambda", "0.5"]
    _, trainer = run_training(parse_config(args))
    (labeled,) = (next(stream) for stream in trainer.loaders())
    assert {"image", "view", "aug", "box", "flip"} <= set(labeled)
    model, labels = trainer.model.train(), labeled["label"]
    with torch.no_grad():  # train-mode forwards: BatchNorm uses batch statistics, as in the step
        outputs = {key: model(T.normalize(labeled[key]))[0] for key in ("image", "view", "aug")}
    expected_ce = sum(F.cross_entropy(outputs[key], labels) for key in outputs)
    explained = []
    explain = trainer.settings.explain
    spy = lambda images, logits, features, classes: explained.append(classes) or explain(images, logits, features, classes)
    losses = trainer.training_step(labeled, None, dataclasses.replace(trainer.settings, explain=spy))
    assert float(losses.ce) == pytest.approx(float(expected_ce), rel=1e-4)
    # The pair is the centre view and its augmentation, explained for the predicted class.
    assert len(explained) == 2 and torch.equal(explained[0], outputs["view"].argmax(1)) and torch.equal(explained[1], explained[0])
    assert float(losses.consistency) > 0


def test_epochs_end_with_a_partial_batch_as_the_released_loader():
    from semisup.data.datasets import EpochSampler
    assert EpochSampler(12811, 128, seed=0, stream=0).batches_per_epoch == 101  # the released 1 % run
    assert EpochSampler(12811, 16, seed=0, stream=0, rank=3, world=8).batches_per_epoch == 101  # 8 GPUs
    sampler = iter(EpochSampler(50, 16, seed=0, stream=0))
    epoch = [next(sampler) for _ in range(4)]
    assert [len(b) for b in epoch] == [16, 16, 16, 2]
    assert sorted(i for b in epoch for i, _ in b) == list(range(50))  # every image once per epoch
    assert sorted(i for b in [next(sampler) for _ in range(4)] for i, _ in b) == list(range(50))
    # Resuming mid-epoch continues with the same batches.
    resumed = iter(EpochSampler(50, 16, seed=0, stream=0, start_batch=2))
    assert next(resumed) == epoch[2]


def test_recipes_and_the_gcc_lambda():
    cfg = parse_config(["--data", "/imagenet", "--recipe", "full-supervision"])
    assert (cfg.labeled_fraction, cfg.lr_trunk, cfg.lr_head, cfg.weight_decay, cfg.lr_milestones, cfg.lr_gamma, cfg.epochs,
            cfg.batch_labeled, cfg.cgc_weight, cfg.temperature, cfg.recipe) == (1.0, 0.1, 0.1, 1e-4, (30, 60), 0.1, 90, 256, 0.5, 0.5,
                                                                                "full-supervision")
    assert parse_config(["--data", "/imagenet", "--recipe", "full-supervision", "--lambda", "0"]).ce_mode == "plain"
    assert parse_config(["--data", "/imagenet", "--lambda", "0"]).ce_mode == "lambda0-script"
    assert parse_config(["--data", "/imagenet", "--recipe", "full-supervision-gcc"]).cgc_weight == 1000
    # --consistency l2 alone takes the released GCC script's lambda; an explicit one wins.
    assert parse_config(["--consistency", "l2"]).cgc_weight == 1000
    assert parse_config(["--consistency", "l2", "--lambda", "3"]).cgc_weight == 3
    cub = parse_config(["--data", "/cub", "--recipe", "cub"])
    assert (cub.num_classes, cub.val_dir, cub.weight_decay) == (200, "test", 1e-4)
    # The default recipe is the released 1 % run: 63 negatives per anchor, MultiStepLR [12, 16] x0.2.
    default = parse_config(["--data", "/imagenet"])
    assert (default.group_size, default.cgc_negatives, default.eval_every, default.lr_milestones) == (64, "aug", 1, (12, 16))


def test_the_demo_schedule_at_each_fraction_is_the_demo_tables():
    """run.py --labeled-fraction 0.1 on the demo scheduled 2,700 steps (60 epochs of the 10 %
    set) while the table ran 6 epochs: the schedule is now the demo's own, by fraction."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("table", ROOT / "jobs" / "reproduce_demo_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    expected = {0.01: (60, (40, 52)), 0.1: (6, (4, 5)), 1.0: (1, (0.7,))}
    for fraction, (epochs, milestones) in expected.items():
        cfg = parse_config(["--labeled-fraction", str(fraction)])
        assert (cfg.epochs, cfg.lr_milestones) == (epochs, milestones), fraction
        # The table's command line for the row is the bare fraction: nothing of the schedule is its own.
        assert "--epochs" not in sum((flags for _, _, flags in table.ROWS["limited"] + table.ROWS["full"]), [])
    assert parse_config(["--labeled-fraction", "0.1", "--epochs", "3"]).epochs == 3  # a flag still wins
    assert parse_config(["--labeled-fraction", "0.05"]).epochs == 60  # other fractions: 1 %'s
    assert parse_config(["--data", "/imagenet", "--labeled-fraction", "0.1"]).epochs == Config.epochs  # not the demo's
    from semisup.config import build_parser
    assert "demo: 60 (6 at 10 %, 1 at 100 %)" in " ".join(build_parser().format_help().split())


def test_adamw_and_a_linear_warmup_are_settings():
    """What a ViT from scratch takes (DeiT trains with AdamW and a warm-up); SGD stays the default."""
    from semisup.config import ConfigError
    from semisup.train.trainer import Schedule, build_optimizer
    cfg = parse_config(["--optimizer", "adamw", "--lr-warmup-epochs", "1.5", "--weight-decay", "0.05"])
    weights = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build_optimizer(cfg, weights, [])
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.05
    assert isinstance(build_optimizer(parse_config([]), weights, []), torch.optim.SGD)
    with pytest.raises(ConfigError, match="momentum.*means nothing for --optimizer adamw"):
        parse_config(["--optimizer", "adamw", "--momentum", "0.5"])
    # Warm-up over 1.5 epochs of 4 steps: 1/6, 2/6, ... 1 at step 5, then the milestone's decay.
    schedule = Schedule(steps_per_epoch=4, total_steps=40, milestones=(3,), gamma=0.5, warmup_epochs=1.5)
    assert [round(schedule.factor(s), 4) for s in (0, 1, 5, 6, 11, 12)] == [0.1667, 0.3333, 1.0, 1.0, 1.0, 0.5]
    assert Schedule(4, 40, (3,), 0.5).factor(0) == 1.0  # no warm-up: the released schedule


def test_fgvc_aircraft_in_its_released_layout(tmp_path, demo_cache):
    """torchvision's FGVCAircraft reader on a generated fgvc-aircraft-2013b tree, trained for a few steps."""
    from PIL import Image

    from semisup.data.formats import build_data
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    variants = ["707-320", "A320", "DC-3"]
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    rng = np.random.default_rng(0)
    for split, count in (("trainval", 4), ("test", 2)):
        lines = []
        for v, variant in enumerate(variants):
            for k in range(count):
                name = f"{split}{v}{k:03d}"
                Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(data / "images" / f"{name}.jpg")
                lines.append(f"{name} {variant}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    args = ["--data", str(tmp_path), "--data-format", "fgvc-aircraft", "--labeled-fraction", "1.0", "--arch", "resnet_tiny",
            "--image-size", "32", "--resize-size", "36", "--ch-short-side", "32", "--batch-labeled", "4", "--workers", "0",
            "--gallery", "0", "--epochs", "1", "--lambda", "0.5", "--run-dir", str(tmp_path / "run")]
    bundle = build_data(parse_config(args))
    assert bundle.classes == variants and len(bundle.labeled_indices) == 12 and len(bundle.val.source) == 6
    assert bundle.labeled.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    result = train(parse_config(args))
    assert result["steps"] == 3 and result["final"]["train_consistency"] > 0
    with pytest.raises(Exception, match="not an FGVC-Aircraft tree"):
        build_data(parse_config(args[:1] + [str(tmp_path / "elsewhere")] + args[2:]))
