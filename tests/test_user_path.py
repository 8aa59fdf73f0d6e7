"""The cluster path as a user walks it: a fresh clone, the downloaded files where the download
commands put them, a sweep with relative paths submitted through submitit's local executor,
the status table, the report."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.imagenet_tree import voc_xml

ROOT = Path(__file__).resolve().parents[1]


def fresh_clone(dest: Path) -> Path:
    """The repository's tracked files (as in a clean clone of this tree), committed in a new git repo."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, files.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def imagenet_for_split(root: Path, split: list[str]) -> None:
    """train/<wnid>/<file> for every file a split names (one small JPEG's bytes each), and a
    validation folder with boxes for three of its classes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    buffer = root / "one.jpg"
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buffer, quality=90)
    data = buffer.read_bytes()
    buffer.unlink()
    for name in split:
        folder = root / "train" / name.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    wnids = sorted({name.split("_")[0] for name in split})[:3]
    (root / "boxes").mkdir()
    for k, wnid in enumerate(wnids):
        (root / "val" / wnid).mkdir(parents=True)
        image_id = f"ILSVRC2012_val_{k + 1:08d}"
        (root / "val" / wnid / f"{image_id}.JPEG").write_bytes(data)
        (root / "boxes" / f"{image_id}.xml").write_text(voc_xml((24, 24), [(wnid, (3, 3, 20, 20))]))


def fake_swav_checkpoint(path: Path) -> None:
    """A SwAV-layout file (module. prefix, projection head) for the tiny demo ResNet."""
    from semisup.models.base import build_model
    torch.manual_seed(0)
    model = build_model("resnet_tiny", 10)
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(32, 128)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(what)


@pytest.mark.parametrize("split", ["standard", "own"])
@pytest.mark.slow
def test_a_sweep_submitted_from_a_fresh_clone_with_downloaded_files_runs_and_reports(tmp_path, split, request):
    clone = fresh_clone(tmp_path / "clone")
    # Where `semisup-splits download` and `semisup-pretrained download` put them (git-ignored);
    # or a split file of the user's own beside them, named by a relative path.
    if split == "standard":
        shared_splits = request.getfixturevalue("shared_splits")
        shutil.copy(shared_splits / "1percent.txt", clone / "splits" / "1percent.txt")
        names, split_flags = (shared_splits / "1percent.txt").read_text().split(), ["--labeled-fraction", "0.01"]
    else:
        names = [f"n{c:08d}_{k}.JPEG" for c in range(4) for k in range(8)]
        (clone / "splits" / "mine.txt").write_text("\n".join(names[::2]) + "\n")
        split_flags = ["--split-file", "splits/mine.txt"]
    fake_swav_checkpoint(clone / "pretrained" / "swav_800ep_pretrain.pth.tar")
    assert "splits/" not in subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True).stdout
    data = tmp_path / "imagenet"
    imagenet_for_split(data, names)
    # The published sweep's shape, with its relative pretrained path, at toy size.
    sweep = dict(name="imagenet-1pct", base=["--data", str(data), "--val-boxes", str(data / "boxes"), *split_flags,
                                             "--pretrained", "pretrained/swav_800ep_pretrain.pth.tar", "--arch", "resnet_tiny",
                                             "--image-size", "16", "--resize-size", "20", "--ch-short-side", "16",
                                             "--batch-labeled", "16", "--batch-unlabeled", "16", "--max-steps", "2",
                                             "--max-eval-images", "8", "--gallery", "0", "--workers", "0"],
                 grid=dict(**{"lambda": [0, 0.1]}, seed=[0]))
    (clone / "jobs" / "sweep_toy.yaml").write_text(yaml.safe_dump(sweep))
    # The clone's package first on the import path, as `pip install -e .` in the clone makes it.
    env = dict(os.environ, PYTHONPATH=str(clone))
    submit = subprocess.run([sys.executable, "jobs/submit.py", "--cluster", "local", "--sweep", "jobs/sweep_toy.yaml"],
                            cwd=clone, capture_output=True, text=True, timeout=300, env=env)
    assert submit.returncode == 0, submit.stderr
    assert "checked lambda0_seed0" in submit.stdout and "checked lambda0.1_seed0" in submit.stdout
    runs = clone / "runs" / "imagenet-1pct"

    def both_finished():
        status = subprocess.run([sys.executable, "jobs/status.py", "runs/imagenet-1pct"], cwd=clone, capture_output=True, text=True,
                                env=env)
        assert "FAILED" not in status.stdout and "DIED" not in status.stdout, status.stdout
        return status.stdout if status.stdout.count("COMPLETED") == 2 else None
    table = wait_for(both_finished, 300, "the two jobs did not complete")
    assert "lambda0_seed0" in table and "lambda0.1_seed0" in table and "finished" in table
    # The jobs read the submitting checkout's downloaded files, by absolute path.
    record = json.loads((runs / "lambda0.1_seed0" / "job.json").read_text())[-1]
    assert record["reads"]["split_file"] == str(clone / "splits" / ("1percent.txt" if split == "standard" else "mine.txt"))
    assert record["reads"]["pretrained"] == str(clone / "pretrained" / "swav_800ep_pretrain.pth.tar")
    assert record["reads"]["code"] != str(clone) and Path(record["reads"]["code"], "semisup", "train", "trainer.py").is_file()  # the snapshot
    log = (runs / "lambda0.1_seed0" / "train.log").read_text()
    assert "swav_800ep_pretrain.pth.tar" in log

    # A rerun of the same seed and settings is one seed; a run with other settings is its own row.
    shutil.copytree(runs / "lambda0.1_seed0", runs / "lambda0.1_seed0-2")
    other = runs / "lambda0.1_seed0_lrhead"
    shutil.copytree(runs / "lambda0.1_seed0", other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    (other / "config.yaml").write_text(yaml.safe_dump(dict(config, lr_head=0.5), sort_keys=False))
    report = subprocess.run([sys.executable, "semisup/report.py", *sorted(map(str, runs.iterdir())), "--no-galleries"],
                            cwd=clone, capture_output=True, text=True, env=env)
    assert report.returncode == 0, report.stderr
    rows = [line for line in report.stdout.splitlines() if line.startswith("| imagenet")]
    assert len(rows) == 3, report.stdout  # CE, CGC at lr_head 5, CGC at lr_head 0.5
    cgc_rows = [r for r in rows if "| CGC" in r]
    assert sorted("lr-head 0.5" in r for r in cgc_rows) == [False, True]
    assert all(r.rstrip(" |").split("|")[-1].strip().startswith("1 (") for r in rows)  # one distinct seed each, marked
    assert "same settings and seed 0" in report.stderr
