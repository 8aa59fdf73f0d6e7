"""The platform: an explainer, a heatmap metric, a dataset format and a box format added from a
module outside the package, through the registries alone, then trained and evaluated with through
the commands a user runs; a ViT from timm trained with CGC and scored with CH; a Score-CAM evaluation of a
run's checkpoint; the pointing game against a hand computation."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from semisup.eval.heatmap_metrics import pointing_game
from semisup.registry import DATA_FORMATS, EXPLAINERS, HEATMAP_METRICS

ROOT = Path(__file__).resolve().parents[1]

EXTENSION = textwrap.dedent('''
    """A researcher's extension, outside the package: one explainer, one metric, one data format,
    one box format."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from semisup.data.boxes import ImageBoxes, load_boxes, register_box_reader
    from semisup.data.bundle import DataBundle, EvalSet
    from semisup.data.datasets import ArraySource
    from semisup.data.formats import register_data_format
    from semisup.eval.heatmap_metrics import register_heatmap_metric, upsampled
    from semisup.method.explainers import get, register_explainer

    CLASSES = ["a", "b", "c", "d"]


    @register_explainer("bright-gradcam")
    def bright_gradcam(request):
        """Grad-CAM weighted by each region's mean input brightness: it sees the images."""
        cam = get("gradcam")(request)
        brightness = F.adaptive_avg_pool2d(request.images.mean(1, keepdim=True), cam.shape[-2:])[:, 0]
        return cam * torch.sigmoid(brightness)


    @register_heatmap_metric("top_half_mass", column="Top half", headline=True)
    def top_half_mass(cams, boxes, size):
        """Share of the heatmap's mass in the image's top half."""
        up = upsampled(cams, size).clamp_min(0).double()
        return up[:, : size[0] // 2].sum((1, 2)) / up.sum((1, 2)).clamp_min(1e-12)


    @register_box_reader("stripe-boxes", recognises=lambda path: path.suffix == ".stripes")
    def read_stripe_boxes(path):
        """'<image id> <class> <top row> <bottom row>' lines: a box across the image's width."""
        out = {}
        for line in path.read_text().splitlines():
            image, cls, top, bottom = line.split()
            out[image] = ImageBoxes((32, 32), {cls: np.array([[0, float(top), 32, float(bottom)]], np.float32)})
        return out


    @register_data_format("stripes")
    def stripes(settings, decode_check):
        """4 classes of 32 x 32 images: a bright stripe at one of 4 heights; the boxes are --val-boxes'."""
        # The builder sees the data settings only (semisup.data.settings), not training's.
        assert type(settings).__name__ == "DataSettings" and not hasattr(settings, "lr_head"), settings
        rng = np.random.default_rng(0)
        def make(n):
            labels = np.arange(n) % 4
            images = rng.integers(0, 60, (n, 32, 32, 3), dtype=np.uint8)
            for i, c in enumerate(labels):
                images[i, 8 * c: 8 * c + 8] = 220
            return ArraySource(images, labels), labels
        train, _ = make(64)
        val, labels = make(16)
        annotated = load_boxes(settings.val_boxes)  # the registry picks the reader that recognises the file
        boxes = [annotated[f"val{i}"].of_class(CLASSES[c]) if f"val{i}" in annotated else None
                 for i, c in enumerate(labels)]
        labeled = np.arange(0, 64, 4)
        summary = dict(dataset="stripes", classes=4, labeled=len(labeled), unlabeled=64, validation=16,
                       validation_with_boxes=sum(b is not None for b in boxes), dataset_digest="stripes-v1")
        return DataBundle(CLASSES, train, labeled, train, np.arange(64), EvalSet(val, boxes, [(32, 32)] * 16), summary)
''')


def run(*argv: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=cwd, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_an_explainer_a_metric_a_data_format_and_a_box_format_from_a_module_outside_the_package(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "stripes_extension.py").write_text(EXTENSION)
    env = {"PYTHONPATH": str(plugins)}
    run_dir = tmp_path / "run"
    # Boxes in the plugin's own format for 12 of the 16 validation images (the stripe, rows 8c..8c+8).
    boxes = tmp_path / "val.stripes"
    boxes.write_text("".join(f"val{i} {'abcd'[i % 4]} {8 * (i % 4)} {8 * (i % 4) + 8}\n" for i in range(12)))
    out = run("semisup/run.py", "--plugins", "stripes_extension", "--data", str(tmp_path), "--data-format", "stripes",
              "--val-boxes", str(boxes), "--explainer", "bright-gradcam", "--arch", "resnet_tiny", "--image-size", "32",
              "--resize-size", "32", "--ch-short-side", "32", "--batch-labeled", "8", "--batch-unlabeled", "8", "--group-size", "8",
              "--epochs", "2", "--workers", "0", "--gallery", "0", "--run-dir", str(run_dir), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["final"]["top_half_mass"] is not None and 0 <= final["final"]["top_half_mass"] <= 100
    assert 0 <= final["final"]["pointing_game"] <= 100 and np.isfinite(final["final"]["train_consistency"])
    assert "top_half_mass" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    # CH from the plugin's box reader: on the 12 annotated images only.
    assert final["final"]["ch_images"] == 12 and np.isfinite(final["final"]["ch"]) and 0 < final["final"]["ch"] <= 100
    # The metric declares itself headline: a final_* column of the status table.
    status = run("jobs/status.py", str(run_dir), env={**env, "SEMISUP_PLUGINS": "stripes_extension"})
    assert status.returncode == 0 and "final_top_half_mass" in status.stdout, status.stdout + status.stderr
    # Evaluated later, the run's plugin is loaded only when the user names it (a run folder never
    # imports code): without --plugins, the note and one line naming the missing explainer.
    out = run("semisup/evaluate.py", "--checkpoint", str(run_dir / "checkpoint.pt"), "--metrics", "top1,ch",
              "--gallery", "0", env=env)
    assert out.returncode == 1 and "stripes_extension, not loaded" in out.stderr, out.stderr[-3000:]
    assert out.stderr.splitlines()[-1].startswith("error: --explainer bright-gradcam: no such explainer")
    out = run("semisup/evaluate.py", "--checkpoint", str(run_dir / "checkpoint.pt"), "--metrics", "top1,ch",
              "--gallery", "0", "--plugins", "stripes_extension", env=env)
    assert out.returncode == 0 and "not loaded" not in out.stderr, out.stderr[-3000:]
    report = run("semisup/report.py", str(run_dir), env={**env, "SEMISUP_PLUGINS": "stripes_extension"})
    assert report.returncode == 0 and "Top half" in report.stdout, report.stdout + report.stderr
    # Without the module on the path: one line naming it.
    missing = run("semisup/run.py", "--plugins", "stripes_extension", "--dry-run")
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1
    assert "--plugins stripes_extension: cannot import it" in missing.stderr


@pytest.mark.parametrize("mistake", ["taken name", "broken import", "file path"])
@pytest.mark.slow
def test_a_plugins_mistake_is_one_line_naming_the_module(tmp_path, mistake):
    """A plugin that takes a name the package has, one whose own import fails, and a file path
    given for a module name: each one line naming the module and what to do, before any run."""
    (tmp_path / "takes_gradcam.py").write_text("from semisup.method.explainers import register_explainer\n"
                                               "register_explainer('gradcam')(lambda request: request.features.mean(1))\n")
    (tmp_path / "imports_badly.py").write_text("from semisup.eval.heatmap_metrics import register_heatmap_metrc\n")
    module, expected = {
        "taken name": ("takes_gradcam", "--plugins takes_gradcam: explainer 'gradcam' is registered twice"),
        "broken import": ("imports_badly", "--plugins imports_badly: the plugin was found, but an import inside it"),
        "file path": (str(tmp_path / "takes_gradcam.py"), "a module name is wanted, not a file: --plugins takes_gradcam"),
    }[mistake]
    out = run("semisup/run.py", "--plugins", module, "--max-steps", "1", "--run-dir", str(tmp_path / "run"),
              env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and expected in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_vit_from_timm_trains_with_cgc_and_is_scored_with_ch(tmp_path, demo_cache):
    pytest.importorskip("timm")
    from semisup.config import parse_config
    from semisup.train.trainer import train
    result = train(parse_config([
        "--arch", "timm/deit_tiny_patch16_224", "--labeled-fraction", "0.05", "--max-steps", "3", "--batch-labeled", "8",
        "--batch-unlabeled", "8", "--group-size", "8", "--workers", "0", "--max-eval-images", "16", "--gallery", "0",
        "--pretrained", "none", "--demo-cache", demo_cache, "--run-dir", str(tmp_path / "vit")]))
    final = result["final"]
    assert result["steps"] == 3 and np.isfinite(final["train_consistency"]) and final["train_consistency"] > 0
    assert final["ch"] is not None and 0 < final["ch"] <= 100


@pytest.mark.slow
def test_a_score_cam_evaluation_of_a_runs_checkpoint_prints_ch(tmp_path, demo_cache):
    pytest.importorskip("pytorch_grad_cam")
    run_dir = tmp_path / "run"
    out = run("semisup/run.py", "--labeled-fraction", "0.05", "--max-steps", "2", "--batch-labeled", "8",
              "--batch-unlabeled", "8", "--group-size", "8", "--workers", "0", "--max-eval-images", "8", "--gallery", "0",
              "--demo-cache", demo_cache, "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr[-2000:]
    out = run("semisup/evaluate.py", "--checkpoint", str(run_dir / "checkpoint.pt"), "--explainer", "pgc/ScoreCAM",
              "--metrics", "ch", "--max-eval-images", "8", "--gallery", "0", "--out", str(tmp_path / "scorecam"))
    assert out.returncode == 0, out.stderr[-2000:]
    header, *rows = [line for line in out.stdout.splitlines() if "CH" in line or line.startswith("cgc")]
    row = json.loads((tmp_path / "scorecam" / "eval.jsonl").read_text().splitlines()[-1])
    assert 0 < row["ch"] <= 100 and f"{row['ch']:.2f}" in out.stdout
    assert row["explainer"] == "pgc/ScoreCAM"  # eval.jsonl says which heatmaps its CH scored
    key = run("semisup/evaluate.py", "--checkpoint", str(run_dir / "checkpoint.pt"), "--metrics", "pointing_game")
    assert key.returncode == 2 and "pointing_game comes with --metrics ch" in key.stderr, key.stderr
    unknown = run("semisup/evaluate.py", "--checkpoint", str(run_dir / "checkpoint.pt"), "--explainer", "pgc/Nope",
                  "--metrics", "ch")
    assert unknown.returncode != 0 and unknown.stderr.count("\n") == 1 and "pgc/ScoreCAM" in unknown.stderr


def test_the_pointing_game_against_a_hand_computation():
    cams = torch.zeros(3, 4, 4)
    cams[0, 0, 0] = 1.0  # peak top-left
    cams[1, 3, 3] = 1.0  # peak bottom-right
    # Third: all zero: the first maximum, the top-left pixel.
    boxes = [np.array([[0, 0, 4, 4]], np.float32), np.array([[0, 0, 4, 4]], np.float32),
             np.array([[4, 4, 8, 8]], np.float32)]
    hits = pointing_game(cams, boxes, (8, 8))
    # Upsampled x2, the peaks sit at pixels (0, 0) and (7, 7): inside the top-left box, outside it.
    assert hits.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.slow
def test_the_registries_are_the_only_lists_of_names():
    assert {"gradcam", "gradcam++", "layercam"} <= set(EXPLAINERS.names())
    assert "pointing_game" in HEATMAP_METRICS
    assert {"imagefolder", "fgvc-aircraft"} == set(DATA_FORMATS.names())
    help_text = run("semisup/run.py", "--help").stdout
    assert "layercam" in help_text and "pgc/<Class>" in help_text


BACKBONE_PLUGIN = textwrap.dedent('''
    """A researcher's backbone, outside the package: two convolutions, no BatchNorm."""
    import torch.nn as nn

    from semisup.models.base import CamBackbone, register_backbone


    @register_backbone("my-net")
    class MyNet(CamBackbone):
        def __init__(self, arch, num_classes):
            super().__init__()
            self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU(),
                                       nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
            self.fc = nn.Linear(32, num_classes)
            self.arch = arch

        def features(self, x):
            return self.trunk(x)
''')


@pytest.mark.slow
def test_a_backbone_from_a_plugin_trains_on_the_demo_and_is_evaluated(tmp_path, demo_cache):
    """--arch asks the one registry: a plugin's backbone was refused by a copied list of names."""
    (tmp_path / "my_backbone.py").write_text(BACKBONE_PLUGIN)
    env = {"PYTHONPATH": str(tmp_path)}
    run_dir = tmp_path / "run"
    out = run("semisup/run.py", "--plugins", "my_backbone", "--arch", "my-net", "--pretrained", "none",
              "--labeled-fraction", "0.02", "--epochs", "1", "--max-steps", "2", "--demo-cache", demo_cache,
              "--max-eval-images", "32", "--gallery", "0", "--workers", "0", "--run-dir", str(run_dir), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    final = json.loads((run_dir / "final.json").read_text())
    assert final["arch"] == "my-net" and final["steps"] == 2 and np.isfinite(final["final"]["train_consistency"])
    assert "BatchNorm over nothing (the model has no BatchNorm)" in (run_dir / "train.log").read_text()
    out = run("semisup/evaluate.py", "--checkpoint", str(run_dir / "checkpoint.pt"), "--metrics", "top1,ch",
              "--gallery", "0", "--plugins", "my_backbone", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    header = next(line for line in out.stdout.splitlines() if line.startswith("method"))
    assert "CH strict" in header and "CH rel.SwAV" not in header  # it reads a ResNet's layer4: not this net's
    assert "not shown: CH rel. SwAV reads a ResNet's layer4 channels, not my-net's" in out.stdout
    # Without the plugin the name is unknown, in one line naming where names come from.
    out = run("semisup/run.py", "--arch", "my-net", "--dry-run", env=env)
    assert out.returncode == 2 and "unknown architecture 'my-net'" in out.stderr and "--plugins" in out.stderr
