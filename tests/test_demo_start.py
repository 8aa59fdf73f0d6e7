"""The demo's shipped self-supervised start, and the report's pictures."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from semisup.config import DEMO_START, parse_config
from semisup.models.base import build_model
from semisup.models.loading import CheckpointError, load_pretrained
from semisup.train.rundir import default_run_dir

SHIPPED = Path(DEMO_START)


def test_shipped_weights_load_every_trunk_tensor_and_their_digest_is_checked(tmp_path):
    manifest = json.loads(SHIPPED.with_name(SHIPPED.name + ".json").read_text())
    assert hashlib.sha256(SHIPPED.read_bytes()).hexdigest() == manifest["sha256"]
    assert SHIPPED.stat().st_size <= 2 * 2**20
    model = build_model("resnet_tiny", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, SHIPPED)
    trunk = [k for k in model.trunk_keys() if not k.endswith("num_batches_tracked")]
    assert report["loaded"] >= len(trunk) and report["missing"] == 0 and report["manifest"]["sha256"] == manifest["sha256"]
    assert all(not torch.equal(before[k], model.state_dict()[k]) for k in trunk if k.endswith("conv1.weight"))
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    # SwAV's checkpoint layout: module. prefix, the projection head beside the trunk.
    keys = torch.load(SHIPPED, weights_only=True).keys()
    assert all(k.startswith("module.") for k in keys) and any(k.startswith("module.projection_head.") for k in keys)
    # A changed copy (same manifest beside it) is refused, naming the fix.
    copy = tmp_path / SHIPPED.name
    shutil.copy(SHIPPED, copy)
    shutil.copy(SHIPPED.with_name(SHIPPED.name + ".json"), tmp_path)
    state = torch.load(copy, weights_only=True)
    first = next(k for k in state if k.endswith("conv1.weight"))
    state[first] = state[first] + 1e-3
    torch.save(state, copy)
    with pytest.raises(CheckpointError, match="does not match .*git checkout"):
        load_pretrained(build_model("resnet_tiny", 10), copy)


def test_the_quick_start_starts_from_the_shipped_weights_and_none_means_scratch(tmp_path, demo_cache):
    quick = parse_config(["--labeled-fraction", "0.01"])
    assert quick.pretrained == str(SHIPPED)
    scratch = parse_config(["--labeled-fraction", "0.01", "--pretrained", "none"])
    assert scratch.pretrained is None
    assert default_run_dir(scratch) != default_run_dir(quick)  # a scratch run never lands in the shipped start's folder
    assert parse_config(["--data", str(tmp_path), "--labeled-fraction", "0.01"]).pretrained is None  # ImageNet: given explicitly
    from semisup.train.trainer import run_training
    result, trainer = run_training(parse_config(["--labeled-fraction", "0.01", "--demo-cache", demo_cache, "--dry-run"]))
    assert result["trunk_tensors_loaded"] == trainer.pretrained_report["loaded"] > 0
    _, trainer = run_training(parse_config(["--labeled-fraction", "0.01", "--demo-cache", demo_cache, "--dry-run", "--pretrained", "none"]))
    assert trainer.pretrained_report is None


def fake_run(root: Path, name: str, fraction: float, method: str, seed: int, top1: float, ch: float, cgc_weight: float = 0.1,
             temperature: float = 0.5, epochs: int = 4) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = dict(labeled_fraction=fraction, seed=seed, cgc_weight=0.0 if method == "ce" else cgc_weight, temperature=temperature,
               arch="resnet_tiny", pretrained=None)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    final = dict(method=method, steps=10, final=dict(top1=top1, top5=top1 + 30, ch=ch, ch_strict=ch, knn_top1=top1), best={})
    (run / "final.json").write_text(json.dumps(final))
    rng = np.random.default_rng(seed)
    pd.DataFrame(dict(epoch=range(1, epochs + 1), step=range(10, 10 * epochs + 1, 10), train_ce=np.linspace(2.3, 1.0, epochs),
                      train_consistency=np.linspace(4, 3, epochs) if method != "ce" else 0.0,
                      top1=np.linspace(10, top1, epochs) + rng.normal(0, 1, epochs),
                      ch=[np.nan] * (epochs - 1) + [ch])).to_csv(run / "metrics.csv", index=False)
    return run


@pytest.mark.slow
def test_report_writes_the_tradeoff_and_curve_plots_from_run_directories(tmp_path, capsys):
    from PIL import Image

    from semisup.tools.report import main
    runs = [fake_run(tmp_path / "runs", f"{m}-{f}-{s}-{w}", f, m, s, 30 + s + 10 * f, 25 + 5 * s + (10 if m == "cgc" else 0), cgc_weight=w)
            for f in (0.01, 0.1) for s in (0, 1, 2) for m, w in (("ce", 0.0), ("cgc", 0.1), ("cgc", 0.25))
            if not (m == "ce" and w)]
    assert main([str(r) for r in runs] + ["--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for name in ("tradeoff.png", "curves.png"):
        path = tmp_path / "out" / name
        assert f"wrote {path}" in out
        with Image.open(path) as image:
            assert image.size[0] > 800 and image.size[1] > 300  # a real figure with its panels
    # No checkpoints in fake runs: galleries are skipped, and the report says so.
    assert not list((tmp_path / "out").glob("gallery_*.png"))


def test_gallery_titles_never_overlap_and_zero_heatmaps_are_marked(demo_cache):
    from semisup.data.formats import build_data
    from semisup.eval.gallery import gallery_figure
    cfg = parse_config(["--labeled-fraction", "0.01", "--demo-cache", demo_cache, "--pretrained", "none"])
    bundle = build_data(cfg)
    torch.manual_seed(0)
    trained, silent = build_model(cfg.arch, 10), build_model(cfg.arch, 10)
    torch.nn.init.zeros_(silent.fc.weight)  # every Grad-CAM all zero
    long_name = "Cross-entropy (CGC script, λ 0) (seed 0, lambda 0.1, temperature 0.5)"
    fig = gallery_figure([trained, silent], [long_name, "zero"], bundle, cfg, torch.device("cpu"), count=6,
                         class_names={f"digit_{i}": f"number{i}" for i in range(10)})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 12
    titles = [ax.title.get_window_extent(renderer) for ax in panels]
    boxes = [ax.get_window_extent(renderer) for ax in panels]
    for i, title in enumerate(titles):
        assert not any(title.overlaps(other) for j, other in enumerate(titles) if j != i), panels[i].title.get_text()
        assert not any(title.overlaps(box) for box in boxes), "a title runs into a panel"
    text = [ax.title.get_text() for ax in panels]
    assert all("true " in t and "pred " in t and "CH " in t for t in text)
    assert all("true number" in t for t in text) and not any("digit_" in t for t in text)  # --class-names
    assert text[0].split("\ntrue")[0].replace("\n", " ") == long_name  # every word of the label, in order
    marked = [ax for ax in panels if any("all-zero" in t.get_text() for t in ax.texts)]
    assert all(ax in marked for ax in panels[1::2])  # every panel of the zero model (a random one may have some too)
    assert all(len(ax.images) == (1 if ax in marked else 2) for ax in panels)  # marked panels carry no overlay
    assert any("Grad-CAM of the true class" in ax.get_ylabel() for ax in fig.axes)  # the colour bar


def test_tensorboard_gallery_grid_blends_the_heatmap_and_marks_wrong_predictions(demo_cache):
    """The per-evaluation grid (PIL, milliseconds) draws what the figure draws: half the image
    under half the colour map, no tint for an all-zero heatmap, white boxes, red captions for
    wrong predictions."""
    import matplotlib

    from semisup.data.formats import build_data
    from semisup.eval.gallery import CAPTION_LINES, LINE_HEIGHT, PANEL_SIDE, Panel, gallery_grid, panel_image
    grey = np.full((32, 48, 3), 100, np.uint8)  # landscape: the panel is PANEL_SIDE wide
    hot = Panel(grey, np.ones((32, 48)), predicted=1, label=1, ch=50.0, zero=False)
    top = CAPTION_LINES * LINE_HEIGHT + 4
    cell = np.asarray(panel_image(hot, None, (32, 48), ["a", "b"]))
    inferno_top = np.array(matplotlib.colormaps["inferno"](1.0)[:3]) * 255
    assert np.abs(cell[top + 20, 20].astype(float) - (0.5 * 100 + 0.5 * inferno_top)).max() <= 1
    cold = np.asarray(panel_image(Panel(grey, np.zeros((32, 48)), 1, 1, float("nan"), True), None, (32, 48), ["a", "b"]))
    assert (cold[top + 5, 5] == 100).all()  # all-zero: the image as it is
    boxed = np.asarray(panel_image(hot, [(0, 0, 24, 16)], (32, 48), ["a", "b"]))  # the box in original pixels
    assert (boxed[top + 40, PANEL_SIDE // 2 - 1] == 255).all() and not (cell[top + 40, PANEL_SIDE // 2 - 1] == 255).all()
    red = lambda image: ((image[:top, :, 0] > 150) & (image[:top, :, 1] < 80)).any()
    assert not red(cell) and red(np.asarray(panel_image(Panel(grey, np.ones((32, 48)), 0, 1, 50.0, False), None,
                                                         (32, 48), ["a", "b"])))
    cfg = parse_config(["--labeled-fraction", "0.01", "--demo-cache", demo_cache, "--pretrained", "none", "--gallery", "6"])
    grid = gallery_grid(build_model(cfg.arch, 10), build_data(cfg), cfg, torch.device("cpu"))
    assert grid.dtype == np.uint8 and grid.shape == (2 * (PANEL_SIDE + top + 4), 4 * (PANEL_SIDE + 4), 3)  # 6 panels, 4 a row
