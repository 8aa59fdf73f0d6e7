"""Inputs out of proportion, numbers at their edges, and results that must say what they were
computed on: hostile image and annotation sizes are bounded before they are decoded or
upsampled, wide grayscale is scaled, kNN votes at any temperature, tools check their numbers,
evaluations are tied to the weights and images they measured, and nothing the repository ships is
overwritten by a tool."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semisup.data.boxes import MAX_PIXELS, BoxFileError, parse_voc_xml
from semisup.data.datasets import FileSource
from tests.imagenet_tree import voc_xml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("width, height", [(12000, 12000), (MAX_PIXELS // 1000 + 1, 1000), (60000, 1000)])
@pytest.mark.slow
def test_an_image_of_too_many_pixels_is_unreadable_before_it_is_decoded(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    Image.new("1", (width, height)).save(path)  # a few hundred KB on disk, gigabytes decoded
    assert path.stat().st_size < 30 * 2**20
    # The peak from /proc (VmHWM, this process's own memory): getrusage's ru_maxrss survives exec,
    # so it reported the forking pytest's size (4 GB in a full run) instead of the probe's.
    probe = ("import sys; from semisup.data.datasets import FileSource\n"
             "try:\n    FileSource([sys.argv[1]], [0]).load(0)\nexcept ValueError as err:\n    print(err)\n"
             "hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
             "print(int(hwm.split()[1]) // 1024)")
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=120)
    message, peak_mb = out.stdout.strip().splitlines()
    assert "pixels" in message and ("megapixels" in message or "aspect ratio" in message), message
    assert int(peak_mb) < 1200  # the interpreter and torch; nothing of the image's size


@pytest.mark.parametrize("size", [(60000, 60000), (0, 40), (40, -3), (10**9, 1)])
def test_an_annotation_frame_no_image_has_is_refused_in_one_line(tmp_path, size):
    path = tmp_path / "ILSVRC2012_val_00000001.xml"
    path.write_text(voc_xml(size, [("n00000001", (2, 2, 10, 10))]))
    with pytest.raises(BoxFileError, match=r"ILSVRC2012_val_00000001.xml: <size> .* is not an image's size") as err:
        parse_voc_xml(path)
    assert "\n" not in str(err.value)


def test_an_image_that_is_not_the_one_its_boxes_describe_is_scored_as_unreadable(tmp_path, caplog):
    from semisup.data.datasets import EvalDataset
    Image.new("RGB", (48, 40)).save(tmp_path / "a.png")
    dataset = EvalDataset(FileSource([str(tmp_path / "a.png")], [0]), 32, None, sizes=[(400, 480)])
    item = dataset[0]
    assert item["bad"] == 1 and tuple(item["image"].shape[-2:]) == (32, 38)  # its recorded frame, then resized
    assert "is 48 x 40, but its annotation says 480 x 400" in caplog.text


@pytest.mark.parametrize("mode, value, expected", [("I;16", 32768, 128), ("I;16", 65535, 255), ("I", 1000, 4),
                                                   ("F", 0.5, 128)])
def test_wide_grayscale_images_are_scaled_not_saturated(tmp_path, mode, value, expected):
    path = tmp_path / ("wide.png" if mode == "I;16" else "wide.tif")  # PNG holds no 32-bit or float gray
    written = Image.fromarray(np.full((20, 30), value, dtype={"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert written.mode == mode
    written.save(path)
    image = FileSource([str(path)], [0]).load(0)
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    assert abs(int(image[0, 0, 0]) - expected) <= 1, (mode, int(image[0, 0, 0]))  # before: 255 everywhere


@pytest.mark.parametrize("temperature", [0.07, 1e-3, 1e-6])
def test_knn_votes_the_same_classes_at_any_temperature(temperature):
    from semisup.eval.knn import knn_classify
    torch.manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(60, 16), dim=1)
    labels = torch.arange(60) % 6
    queries = torch.nn.functional.normalize(bank[:12] + 0.05 * torch.randn(12, 16), dim=1)
    predicted = knn_classify(bank, labels, queries, k=5, temperature=temperature)
    assert torch.equal(predicted, labels[:12])  # before: inf weights at 0.001, every query the first class


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr: must be > 0 and finite"), (["--temperature", "0"], "--temperature: must be > 0"),
    (["--crop-scale-min", "1.5"], "--crop-scale-min: must be in (0, 1]"),
    (["--out", "pretrained/demo_swav_resnet_tiny.pth"], "a file the repository ships"),
])
@pytest.mark.slow
def test_the_pretraining_tool_checks_its_numbers_and_never_replaces_the_shipped_start(argv, message):
    shipped = (ROOT / "pretrained" / "demo_swav_resnet_tiny.pth").read_bytes()
    out = run_tool("-m", "semisup.tools.pretrain", "--steps", "2", *argv)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert (ROOT / "pretrained" / "demo_swav_resnet_tiny.pth").read_bytes() == shipped


def test_diverged_pretraining_writes_nothing(tmp_path, monkeypatch, demo_cache, capsys):
    from semisup.models.base import build_model
    from semisup.tools import pretrain
    model = build_model("resnet_tiny", 1)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    monkeypatch.setattr(pretrain, "pretrain", lambda *args, **kwargs: (model, None, [(2, 10.0)]))
    monkeypatch.setattr(pretrain, "knn_probe", lambda *args, **kwargs: 10.0)
    assert pretrain.main(["--steps", "2", "--out", str(tmp_path / "w.pth"), "--demo-cache", demo_cache]) == 1
    assert "the pretraining diverged: non-finite weights" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("rate", [0, -5, "nan", None])
@pytest.mark.slow
def test_planner_rates_that_are_not_positive_are_refused_in_one_line(tmp_path, rate):
    from semisup.train.plan import MEASURED_CPU_PER_CORE, MEASURED_GPU
    rates = dict(MEASURED_GPU["h100"], **MEASURED_CPU_PER_CORE)
    rates["step_images_per_s"] = float(rate) if isinstance(rate, str) else rate
    (tmp_path / "rates.json").write_text(json.dumps({"rates": rates}).replace("NaN", "NaN"))
    out = run_tool("-m", "semisup.tools.bench", "plan", "--rates", str(tmp_path / "rates.json"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "step_images_per_s must be a positive" in out.stderr, out.stderr


@pytest.mark.slow
def test_a_sweep_never_sends_every_point_into_one_folder(tmp_path):
    out = run_tool("jobs/submit.py", "--cluster", "local", "--sweep", "jobs/sweep_demo.yaml", "--dry-run",
                   "--log-dir", str(tmp_path / "logs"), "--", "--run-dir", str(tmp_path / "one"))
    assert out.returncode == 2 and "would send every point of the sweep into one folder" in out.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "one").exists()


def test_the_report_takes_insertion_auc_only_from_the_runs_own_weights_and_says_on_how_many_images(tmp_path, capsys):
    from semisup.tools.report import limited_label_table, load_runs
    from tests.test_evaluate import fake_run

    def run(name, seed, digest, data="/data/imagenet"):
        fake_run(tmp_path / name, "cgc", 0.01, seed, 55.0, 47.0, data_override=data)
        final = json.loads((tmp_path / name / "final.json").read_text())
        (tmp_path / name / "final.json").write_text(json.dumps(dict(final, weights_sha256=f"w{name}",
                                                                    dataset_digest=digest)))
        return tmp_path / name

    a, b = run("a", 0, "d1"), run("b", 1, "d1")
    rows = [dict(checkpoint=str(a / "checkpoint.pt"), iauc=70.0, weights_sha256="wa", images=2, validation=50),
            dict(checkpoint="/elsewhere/checkpoint.pt", iauc=99.0, weights_sha256="other", images=50, validation=50)]
    (a / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (b / "eval.jsonl").write_text(json.dumps(dict(checkpoint=str(b / "checkpoint.pt"), iauc=72.0,
                                                  weights_sha256="other", images=50, validation=50)))
    table = limited_label_table(load_runs([a, b])).iloc[0]
    assert table["IAUC"] == "70.00"  # before: 99.0 from another run's checkpoint (a), 72.0 (b)
    assert "IAUC on 2 of 50 val images" in str(table["Seeds"])
    assert "other weights than the run's final ones" in capsys.readouterr().err
    # Two datasets whose folders share a name: two rows, never two seeds of one.
    c = run("c", 1, "d2", data="/other/imagenet")
    assert len(limited_label_table(load_runs([a, c]))) == 2
