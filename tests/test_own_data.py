"""A researcher's own folder of images, as the docs describe it: no boxes, then boxes for some
classes. Trained, evaluated and reported through the commands' entry points: no traceback, and
the tables say what was computed on what (issue 43)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.imagenet_tree import save_image, voc_xml

CLASSES = ["bird", "cat", "dog"]
QUICK = ["--epochs", "1", "--max-steps", "2", "--pretrained", "none", "--arch", "resnet_tiny", "--batch-labeled", "6",
         "--batch-unlabeled", "6", "--workers", "0", "--gallery", "4"]


def own_folder(root: Path, per_class: int = 6, val_per_class: int = 3) -> Path:
    """train/<class>/<class>_<k>.jpg and val/<class>/<class>_v<k>.jpg: an ImageFolder tree."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                save_image(root / split / name / f"{name}_{'v' if split == 'val' else ''}{k}.jpg", rng, (96, 80),
                           class_index=c)
    return root


def boxes_for(root: Path, classes: list[str]) -> Path:
    """VOC XML for the validation images of ``classes`` only."""
    boxes = root / "boxes"
    boxes.mkdir()
    for name in classes:
        for image in sorted((root / "val" / name).iterdir()):
            (boxes / f"{image.stem}.xml").write_text(voc_xml((96, 80), [(name, (20, 16, 70, 60))]))
    return boxes


def _commands(capsys, run_dir: Path, data: Path, *extra: str) -> tuple[str, str, str]:
    """run.py, evaluate.py and report.py on one run: their printed tables (each exits 0)."""
    from semisup.evaluate import main as evaluate
    from semisup.run import main as run
    from semisup.tools.report import main as report
    printed = []
    for command in (lambda: run(["--data", str(data), "--labeled-fraction", "0.5", "--run-dir", str(run_dir), *QUICK,
                                 *extra]),
                    lambda: evaluate(["--checkpoint", str(run_dir / "checkpoint.pt"), "--gallery", "4"]),
                    lambda: report([str(run_dir), "--out", str(run_dir.parent / f"report-{run_dir.name}")])):
        code = command()
        out, err = capsys.readouterr()
        assert code == 0 and "Traceback" not in out + err, err[-2000:]
        printed.append(out)
    return tuple(printed)


@pytest.mark.slow
def test_own_folder_without_boxes_trains_evaluates_and_reports_saying_what_was_not_computed(tmp_path, capsys):
    data = own_folder(tmp_path / "own")
    trained, evaluated, reported = _commands(capsys, tmp_path / "runs" / "a", data)
    for table in (trained, evaluated):
        header = next(line for line in table.splitlines() if line.startswith("method"))
        assert "top-1" in header and "CH" not in header and "top-5" not in header, header
        assert "not shown: top-5 of 3 classes is 100 % by definition" in table
        assert "CH, CH strict, CH rel.SwAV: not computed (no validation image has a box" in table
    header = next(line for line in reported.splitlines() if line.startswith("| Dataset"))
    assert "Top-1" in header and "CH" not in header and "Top-5" not in header, header
    report_dir = tmp_path / "runs" / "report-a"
    assert (report_dir / "curves.png").is_file() and not (report_dir / "tradeoff.png").exists()  # CH vs top-1: no CH
    assert (tmp_path / "runs" / "a" / "gallery.png").is_file()  # heatmaps without boxes
    log = (tmp_path / "runs" / "a" / "train.log").read_text()
    assert "no validation boxes: CH, CH strict, the pointing game" in log
    assert json.loads((tmp_path / "runs" / "a" / "final.json").read_text())["classes"] == 3
    # --arch with a run's checkpoint was silently ignored: now it must agree, or be left out.
    from semisup.evaluate import main as evaluate
    assert evaluate(["--checkpoint", str(tmp_path / "runs" / "a" / "checkpoint.pt"), "--arch", "resnet18"]) == 2
    assert "--arch resnet18: " in capsys.readouterr().err


@pytest.mark.slow
def test_own_folder_with_boxes_for_one_class_says_on_how_many_images_ch_was_computed(tmp_path, capsys):
    data = own_folder(tmp_path / "own")
    boxes = boxes_for(data, ["cat"])
    trained, evaluated, _ = _commands(capsys, tmp_path / "runs" / "b", data, "--val-boxes", str(boxes))
    header = next(line for line in trained.splitlines() if line.startswith("method"))
    assert " CH " in header + " " and "not shown: top-5" in trained
    final = json.loads((tmp_path / "runs" / "b" / "final.json").read_text())["final"]
    assert final["ch_images"] == 3 and final["ch"] is not None  # the cat images only
    log = (tmp_path / "runs" / "b" / "train.log").read_text()
    assert "validation boxes for 3 of 9 images: CH and the other box metrics are computed on those 3 only" in log


def test_a_standard_fraction_on_own_data_is_a_stratified_split_not_imagenets_file(tmp_path, capsys):
    """--labeled-fraction 0.1 named ImageNet's 10percent.txt, which can never match another dataset."""
    from semisup.run import main as run
    data = own_folder(tmp_path / "own", per_class=10)
    splits = tmp_path / "splits"  # no standard file here: ImageNet's would be refused as missing
    splits.mkdir()
    code = run(["--data", str(data), "--labeled-fraction", "0.1", "--splits-dir", str(splits), "--dry-run",
                "--run-dir", str(tmp_path / "r"), *QUICK])
    out, err = capsys.readouterr()
    assert code == 0, err
    written = list(splits.iterdir())
    assert len(written) == 1 and written[0].name.startswith("0.1-seed0-") and written[0].name in out
    from semisup.data.splits import synset_of
    assert sorted(map(synset_of, written[0].read_text().split())) == CLASSES  # one image of each class
