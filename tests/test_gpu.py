"""Checks that need a CUDA GPU (skipped elsewhere; run on a GPU node with `python -m pytest tests/test_gpu.py`)."""
import numpy as np
import pytest
import torch

from semisup.config import parse_config
from semisup.data.datasets import FileSource, TrainDataset
from semisup.train.trainer import train
from tests.imagenet_tree import make_tree

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this machine has none)")


def test_nvjpeg_decode_path_gives_the_cpu_path_crops(tmp_path, capsys):
    """On photographic JPEGs nvJPEG's pixels differ from libjpeg-turbo's only by its chroma
    upsampling and IDCT rounding: the same crops, a mean difference of a few levels of 255."""
    from semisup.data.gpu_decode import EncodedTrainDataset, collate_encoded, decode_and_transform
    from semisup.tools.bench import make_jpegs
    paths = make_jpegs(tmp_path, 16)
    source = FileSource(paths, [0] * len(paths))
    cpu = TrainDataset(source, np.arange(len(paths)), 224, 256, 0.08, crop=True, pair=True)
    encoded = EncodedTrainDataset(source, np.arange(len(paths)), 224, 256, 0.08, crop=True, pair=True)
    keys = [(i, 7 + i) for i in range(len(paths))]
    batch = decode_and_transform(collate_encoded([encoded[k] for k in keys]), torch.device("cuda"), 224, 256)
    diffs = {key: [] for key in ("image", "view", "aug")}
    for n, item in enumerate(cpu[k] for k in keys):
        assert torch.equal(batch["box"][n].cpu(), item["box"])
        for key in diffs:
            assert batch[key].device.type == "cuda"
            diffs[key].append((batch[key][n].cpu().float() - item[key].float()).abs().mean().item())
    with capsys.disabled():
        print("nvJPEG vs CPU path, mean |difference| of 255:", {k: round(float(np.mean(v)), 2) for k, v in diffs.items()})
    assert all(np.mean(v) < 3.0 for v in diffs.values()), diffs


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_short_run_on_the_gpu_with_bf16_and_channels_last(tmp_path, decode):
    root = tmp_path / "imagenet"
    make_tree(root)
    args = ["--data", str(root), "--val-boxes", str(root / "boxes"), "--arch", "resnet18", "--image-size", "64", "--resize-size", "72",
            "--ch-short-side", "64", "--workers", "2", "--splits-dir", str(tmp_path / "splits"), "--batch-labeled", "8",
            "--batch-unlabeled", "8", "--gallery", "2", "--labeled-fraction", "0.5", "--epochs", "2", "--max-bad-fraction", "0.2",
            "--run-dir", str(tmp_path / "run"), "--decode", decode, "--device", "cuda", "--amp", "bf16"]
    result = train(parse_config(args))
    for key in ("top1", "ch", "ch_strict", "ch_released_swav", "cgc_val_loss", "train_consistency"):
        assert np.isfinite(result["final"][key]), key
    assert result["final"]["train_consistency"] > 0


def test_the_default_compiles_on_cuda_and_trains_as_eager_does(tmp_path):
    """The default (torch.compile with Inductor on CUDA) against --no-compile: the same losses
    within bf16's rounding, and no fallback."""
    root = tmp_path / "imagenet"
    make_tree(root)
    args = ["--data", str(root), "--val-boxes", str(root / "boxes"), "--arch", "resnet18", "--image-size", "64",
            "--resize-size", "72", "--ch-short-side", "64", "--workers", "2", "--splits-dir", str(tmp_path / "splits"),
            "--batch-labeled", "8", "--batch-unlabeled", "8", "--gallery", "0", "--labeled-fraction", "0.5", "--epochs",
            "1", "--max-bad-fraction", "0.2", "--device", "cuda", "--amp", "bf16"]
    compiled = train(parse_config(args + ["--run-dir", str(tmp_path / "compiled")]))
    eager = train(parse_config(args + ["--run-dir", str(tmp_path / "eager"), "--no-compile"]))
    log = (tmp_path / "compiled" / "train.log").read_text()
    assert "torch.compile on" in log and "torch.compile failed" not in log
    assert torch.backends.cudnn.benchmark  # as released
    for key in ("train_ce", "train_consistency"):
        assert compiled["final"][key] == pytest.approx(eager["final"][key], rel=0.05), key


def _gpu_args(tmp_path, *extra):
    root = tmp_path / "imagenet"
    if not root.exists():
        make_tree(root, per_class=48)
    return ["--data", str(root), "--val-boxes", str(root / "boxes"), "--workers", "2", "--splits-dir", str(tmp_path / "splits"),
            "--gallery", "0", "--labeled-fraction", "0.5", "--max-bad-fraction", "0.2", "--device", "cuda", "--amp", "bf16",
            *extra]


def test_replica_batchnorm_under_inductor_compiles_without_falling_back(tmp_path):
    """Two released replicas of 64 per process (batch 128 >= 2 x --group-size) at ResNet-50's 224 px,
    the default compile: the run must compile (a silent fallback to eager fails the test)."""
    args = _gpu_args(tmp_path, "--arch", "resnet50", "--batch-labeled", "32", "--batch-unlabeled", "128",
                     "--group-size", "64", "--bn-geometry", "replicas", "--max-steps", "3", "--epochs", "1",
                     "--run-dir", str(tmp_path / "run"))
    result = train(parse_config(args))
    log = (tmp_path / "run" / "train.log").read_text()
    assert "torch.compile on" in log and "torch.compile failed" not in log and "torch.compile off" not in log
    assert "2 replica(s) of 64 images" in log
    assert np.isfinite(result["final"]["train_consistency"]) and result["final"]["train_consistency"] > 0


def test_a_run_stopped_on_the_gpu_resumes_to_the_uninterrupted_weights(tmp_path):
    """As if killed after its previous checkpoint, a GPU run resumes (CUDA generator states restored,
    whatever the GPUs visible) and ends with the uninterrupted run's weights."""
    import os
    args = _gpu_args(tmp_path, "--arch", "resnet18", "--image-size", "64", "--resize-size", "72", "--ch-short-side", "64",
                     "--batch-labeled", "8", "--batch-unlabeled", "8", "--epochs", "1", "--max-steps", "6",
                     "--checkpoint-every", "3", "--no-compile", "--amp", "off", "--workers", "0")
    straight = train(parse_config(args + ["--run-dir", str(tmp_path / "straight")]))
    run_dir = tmp_path / "resumed"
    train(parse_config(args + ["--run-dir", str(run_dir)]))
    os.replace(run_dir / "checkpoint.prev.pt", run_dir / "checkpoint.pt")
    (run_dir / "final.json").unlink()
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 0 < saved["step"] < 6 and len(saved["rng"]["cuda"]) == torch.cuda.device_count()
    resumed = train(parse_config(args + ["--run-dir", str(run_dir)]))
    assert "resumed from" in (run_dir / "train.log").read_text() and resumed["steps"] == straight["steps"]
    # cuDNN's autotuned kernels (benchmark on, as released) need not be bitwise repeatable: close, not equal.
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4) for k in a)
