"""Mistakes are refused up front with one clear line; nothing is lost; odd states are reported as such."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from semisup import checkpoint as ckpt
from semisup.cluster import launch
from semisup.config import ConfigError, make_config, parse_config
from semisup.errors import UsageError
from semisup.run import main
from semisup.train.trainer import RunDirError, UnreadableCheckpoint, run_training, train
from tests.run_helpers import wait_for_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--labeled-fraction", "0.02", "--epochs", "1", "--batch-labeled", "32", "--batch-unlabeled", "32", "--max-eval-images", "32",
         "--gallery", "0", "--max-steps", "2"]


@pytest.mark.parametrize("argv, named", [
    (["--labeled-fraction", "-0.1"], "labeled_fraction: must be in (0, 1]"),
    (["--labeled-fraction", "1.5"], "labeled_fraction: must be in (0, 1]"),
    (["--lambda", "-1"], "--lambda / --cgc-weight / cgc_weight: must be >= 0"),
    (["--temperature", "0"], "temperature: must be > 0"),
    (["--epochs", "0"], "epochs: must be > 0"),
    (["--max-steps", "0"], "max_steps: must be > 0"),
    (["--batch-labeled", "0"], "batch_labeled: must be > 0"),
    (["--device", "gpu"], "device: 'gpu' is not 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (["--arch", "resnet51"], "arch: unknown architecture 'resnet51'"),
])
def test_bad_flags_are_refused_naming_the_setting(argv, named, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(argv + ["--run-dir", str(tmp_path / "run")])
    assert named in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was created


@pytest.mark.parametrize("yaml_text, named", [
    ("consistency: L2\n", "consistency: 'L2' is not one of 'cgc', 'l2'"),
    ("amp: fp32\n", "amp: 'fp32' is not one of"),
    ("epochs: ten\n", "epochs: expected int, got 'ten'"),
    ("lr_milestones: 12\n", "lr_milestones: expected a list of numbers"),
    ("labeled_fraction: 0\n", "labeled_fraction: must be in (0, 1]"),
    ("cgc_weight: [1, 2]\n", "cgc_weight: expected float"),
    ("epochs: [\n", "config file"),
    ("- just a list\n", "expected a mapping"),
])
def test_bad_config_files_are_refused_like_flags(yaml_text, named, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=None) as err:
        parse_config(["--config", str(config)])
    assert named in str(err.value)


def test_batches_must_divide_by_the_processes(monkeypatch):
    for name, value in dict(WORLD_SIZE="3", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29500").items():
        monkeypatch.setenv(name, value)  # as torchrun sets them for the third process
    with pytest.raises(ConfigError, match="batch_labeled: 32 is not divisible by the 3 processes"):
        make_config(dict(batch_labeled=32, batch_unlabeled=30))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.mark.slow
def test_command_line_mistakes_end_in_one_line_and_an_exit_code(tmp_path, demo_cache):
    bad = run_cli("semisup/run.py", "--labeled-fraction", "-0.1", "--run-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "labeled_fraction" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x").exists()
    missing = run_cli("semisup/run.py", "--data", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "y"), "--dry-run")
    assert missing.returncode == 1 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    no_ckpt = run_cli("semisup/evaluate.py", "--checkpoint", str(tmp_path))
    assert no_ckpt.returncode == 1 and "is a folder" in no_ckpt.stderr and "Traceback" not in no_ckpt.stderr
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    garbage = run_cli("semisup/evaluate.py", "--checkpoint", str(tmp_path / "garbage.pt"))
    assert garbage.returncode == 1 and "not a readable checkpoint" in garbage.stderr and "Traceback" not in garbage.stderr
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("grid: [1, 2]\n")
    bad_sweep = run_cli("jobs/submit.py", "--sweep", str(sweep), "--log-dir", str(tmp_path / "logs"))
    assert bad_sweep.returncode == 2 and "a sweep needs" in bad_sweep.stderr and "Traceback" not in bad_sweep.stderr
    no_data = run_cli("jobs/submit.py", "--cluster", "local", "--log-dir", str(tmp_path / "logs"), "--", "--data", str(tmp_path / "nowhere"))
    assert no_data.returncode == 1 and "nothing was queued" in no_data.stderr and not (tmp_path / "logs").exists()
    assert no_data.stderr.strip().count("\n") == 0 and "Traceback" not in no_data.stderr
    report = run_cli("semisup/report.py", str(tmp_path))
    assert report.returncode == 1 and "Traceback" not in report.stderr
    (tmp_path / "cache").write_text("a file")
    # A file where the folder, or one above it, should be (a fault, 1); an empty path (a setting, 2).
    for folder, code in ((str(tmp_path / "cache"), 1), (str(tmp_path / "cache" / "sub"), 1), ("", 2)):
        cache = run_cli("semisup/run.py", "--demo-cache", demo_cache, "--val-cache", folder,
                        "--run-dir", str(tmp_path / "z"))
        assert cache.returncode == code and "--val-cache" in cache.stderr and cache.stderr.strip().count("\n") == 0
        assert "Traceback" not in cache.stderr and not (tmp_path / "z").exists()


def test_overwrite_with_a_bad_checkpoint_leaves_the_finished_run_as_it_was(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    train(parse_config(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir)]))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert {"final.json", "checkpoint.pt", "metrics.csv", "config.yaml"} <= set(before)
    code = main(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir), "--overwrite", "--pretrained", str(tmp_path / "none.pth")])
    assert code == 1
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # nothing touched
    # A good --overwrite moves the finished run aside, never deletes it.
    train(parse_config(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir), "--overwrite", "--seed", "1"]))
    (archive,) = run_dir.glob("replaced-*")
    assert (archive / "final.json").read_bytes() == before["final.json"]
    assert json.loads((run_dir / "final.json").read_text())["seed"] == 1


@pytest.mark.slow
def test_a_second_run_into_a_running_directory_is_refused_naming_the_holder(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    args = ["--labeled-fraction", "0.02", "--epochs", "3", "--batch-labeled", "32", "--batch-unlabeled", "32", "--gallery", "0",
            "--checkpoint-every", "1", "--demo-cache", demo_cache, "--run-dir", str(run_dir)]
    proc = subprocess.Popen([sys.executable, str(ROOT / "semisup" / "run.py"), *args], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_checkpoint(run_dir / "checkpoint.pt", 1)
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {proc.pid} on "):
            train(parse_config(args))
    finally:
        proc.kill()
        proc.wait()
    # The killed run's lock is stale (its process is gone): the same command resumes.
    result = train(parse_config(args))
    assert result["steps"] == 30 and not result["truncated"] and not (run_dir / ".lock").exists()


def test_truncated_checkpoint_is_reported_and_the_previous_generation_kept(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    args = QUICK[:-2] + ["--max-steps", "4", "--checkpoint-every", "2", "--demo-cache", demo_cache, "--run-dir", str(run_dir), "--epochs", "2"]
    cfg = parse_config(args)
    _, trainer = run_training(cfg)
    path, prev = run_dir / "checkpoint.pt", ckpt.previous(run_dir / "checkpoint.pt")
    assert ckpt.load(path)["step"] == 4 and ckpt.load(prev)["step"] == 2  # one earlier generation kept
    (run_dir / "final.json").unlink()  # pretend the run stopped before finishing
    path.write_bytes(path.read_bytes()[:1000])  # truncated, as by a full disk
    with pytest.raises(UnreadableCheckpoint, match=r"truncated or damaged.*checkpoint.prev.pt is kept: `mv"):
        train(cfg)


def test_non_finite_loss_without_a_checkpoint_says_so(tmp_path, demo_cache, capsys):
    code = main(["--labeled-fraction", "0.02", "--epochs", "1", "--batch-labeled", "32", "--gallery", "0", "--lr-trunk", "1e12",
                 "--lr-head", "1e12", "--log-every", "1", "--checkpoint-every", "0", "--demo-cache", demo_cache,
                 "--run-dir", str(tmp_path / "nan")])
    assert code == 1 and "no checkpoint was written before it" in capsys.readouterr().err


def test_resume_without_config_yaml_compares_with_the_checkpoints_own_settings(tmp_path, demo_cache):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(dict(step=1, config=dict(cgc_weight=0.25, labeled_fraction=0.02)), run_dir / "checkpoint.pt")
    with pytest.raises(RunDirError, match="different settings.*cgc_weight"):
        train(parse_config(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir), "--lambda", "1.0"]))


def test_custom_splits_are_keyed_by_the_dataset():
    from semisup.data.splits import custom_split_path
    a = custom_split_path(0.05, 0, ["n01_1.JPEG", "n01_2.JPEG"], Path("splits"))
    b = custom_split_path(0.05, 0, ["n02_1.JPEG", "n02_2.JPEG"], Path("splits"))
    assert a != b and a.name.startswith("0.05-seed0-")
    assert a == custom_split_path(0.05, 0, ["n01_2.JPEG", "n01_1.JPEG"], Path("splits"))  # order does not matter


def test_pretrained_download_replaces_a_file_that_fails_verification(tmp_path, monkeypatch):
    from semisup.models import pretrained
    bad = tmp_path / pretrained.CHECKPOINTS["swav_800ep"]
    bad.write_bytes(b"half a download")
    fetched = []

    def fake_fetch(url, dest):
        fetched.append(url)
        raise OSError("network unreachable")
    monkeypatch.setattr(pretrained.urllib.request, "urlretrieve", fake_fetch)
    assert pretrained.main(["download", "--dest", str(tmp_path)]) == 1  # one line: could not download
    assert fetched and (tmp_path / (bad.name + ".failed")).read_bytes() == b"half a download"


def test_report_and_table_show_non_finite_metrics_as_such():
    from semisup.eval.evaluator import format_results
    table = format_results([dict(method="cgc", top1=10.0, top5=20.0, ch=float("nan"), ch_strict=1.0, cgc_val_loss=float("inf"))])
    assert table.count("non-finite") == 2 and "nan" not in table.lower().replace("non-finite", "")


def test_one_key_vocabulary_for_flags_yaml_and_sweeps(tmp_path):
    from semisup.config import canonical_key
    config = tmp_path / "c.yaml"
    config.write_text("lambda: 0.3\nlr-head: 2\ncgc_warmup_epochs: 1\n")
    cfg = parse_config(["--config", str(config)])
    assert (cfg.cgc_weight, cfg.lr_head, cfg.cgc_warmup_epochs) == (0.3, 2, 1)
    assert parse_config(["--lambda", "0.3"]).cgc_weight == parse_config(["--cgc-weight", "0.3"]).cgc_weight == 0.3
    assert canonical_key("lambda") == canonical_key("--cgc-weight") == canonical_key("cgc_weight") == "cgc_weight"
    sweep = tmp_path / "s.yaml"
    sweep.write_text("grid: {cgc_weight: [0.2], --lr-head: [1]}\n")
    (name, flags), = launch.sweep_commands(sweep, tmp_path)[1]
    assert parse_config(flags).cgc_weight == 0.2 and parse_config(flags).lr_head == 1
    sweep.write_text("grid: {lamda: [0.2]}\n")
    with pytest.raises(UsageError, match="grid key 'lamda' is not a setting"):
        launch.sweep_commands(sweep, tmp_path)


def test_help_is_grouped_and_every_setting_is_in_a_group():
    import dataclasses

    from semisup.config import HELP_GROUPS, Config, build_parser
    grouped = [k for keys in HELP_GROUPS.values() for k in keys]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(Config) if f.metadata["cli"])
    text = build_parser().format_help()
    assert "%%" not in text and all(f"\n{group}:" in text for group in HELP_GROUPS)


@pytest.mark.parametrize("argv, named", [(["--recipe", "cub"], "--recipe cub: .*pass --data"),
                                         (["--cgc-warmup-epochs", "inf"], "cgc_warmup_epochs: must be a finite number"),
                                         (["--lr-head", "nan"], "lr_head: must be a finite number")])
def test_settings_that_would_train_something_else_are_refused(argv, named):
    with pytest.raises(UsageError, match=named):
        parse_config(argv)


def test_recipe_paths_name_the_projects_folders_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(["--recipe", "cub", "--data", str(tmp_path)])
    assert cfg.pretrained == str(ROOT / "pretrained" / "resnet50-19c8e357.pth")


@pytest.mark.slow
def test_a_resume_on_another_number_of_processes_is_said_and_recorded(tmp_path, demo_cache):
    args = ["--labeled-fraction", "0.02", "--epochs", "1", "--max-steps", "2", "--demo-cache", demo_cache, "--gallery", "0",
            "--max-eval-images", "32", "--run-dir", str(tmp_path / "run")]
    assert train(parse_config(args))["process_counts"] == [1]
    # As if the checkpoint had been written by a 2-process run that was stopped before its end.
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    torch.save(dict(state, process_counts=[2]), tmp_path / "run" / "checkpoint.pt")
    (tmp_path / "run" / "final.json").unlink()
    result = train(parse_config(args))
    assert result["process_counts"] == [2, 1]
    assert "resuming on 1 process(es); the run trained on 2" in (tmp_path / "run" / "train.log").read_text()


def test_a_dry_run_says_what_the_planner_expects(demo_cache, capsys):
    assert main(["--dry-run", "--arch", "resnet50", "--pretrained", "none", "--demo-cache", demo_cache]) == 0
    out = capsys.readouterr().out
    assert "planner: about" in out and "1 H100 with 16 cores (no GPU here)" in out


def test_a_lock_that_cannot_be_written_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk while the lock record is written: the error is raised, and neither a lock nor its
    temporary file is left for a later run to trust."""
    import errno
    from pathlib import Path

    from semisup.train.rundir import acquire_lock

    def full(self, *args, **kwargs):
        Path.write_bytes(self, b"{\"pi")  # half a record reaches the disk
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        acquire_lock(tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []


def test_a_resume_on_changed_data_says_what_changed(tmp_path):
    """The labeled subset changed while the run was stopped (its split file edited): refused in
    one line, the run would train on other labels. An unlabeled file added: said, and resumed."""
    import os

    from semisup.train.checkpointer import DataChanged
    from semisup.train.trainer import train
    from tests.imagenet_tree import make_tree
    root = tmp_path / "data"
    make_tree(root, bad=False)
    names = sorted(p.name for p in (root / "train").rglob("*.JPEG"))
    split = tmp_path / "split.txt"
    split.write_text("\n".join(names[::4]) + "\n")
    args = ["--data", str(root), "--val-boxes", str(root / "boxes"), "--split-file", str(split), "--arch", "resnet_tiny",
            "--image-size", "32", "--resize-size", "36", "--ch-short-side", "32", "--batch-labeled", "2", "--batch-unlabeled",
            "4", "--group-size", "4", "--workers", "0", "--gallery", "0", "--max-steps", "4", "--checkpoint-every", "2",
            "--pretrained", "none", "--run-dir", str(tmp_path / "run")]
    train(parse_config(args))
    run_dir = tmp_path / "run"

    def stopped():
        os.replace(run_dir / "checkpoint.prev.pt", run_dir / "checkpoint.pt")
        (run_dir / "final.json").unlink()
    stopped()
    split.write_text("\n".join(names[1::4]) + "\n")  # other labeled images, as many
    with pytest.raises(DataChanged, match=r"the labeled subset changed since step \d \(6 labeled images then, 6 now"):
        train(parse_config(args))
    split.write_text("\n".join(names[::4]) + "\n")
    from PIL import Image
    wnid = names[-1].split("_")[0]
    Image.new("RGB", (90, 80), (9, 9, 9)).save(root / "train" / wnid / f"{wnid}_added.JPEG")
    result = train(parse_config(args))
    assert result["steps"] == 4
    assert "the dataset's files changed since step" in (run_dir / "train.log").read_text()


def test_non_finite_start_weights_are_refused_by_the_dry_run_as_by_the_run(tmp_path, demo_cache, capsys):
    from semisup.models.base import build_model
    from semisup.run import main as run
    state = build_model("resnet_tiny", 10).state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point() and k.startswith("conv"))
    state[first][0] = float("nan")
    torch.save(state, tmp_path / "diverged.pth")
    for extra in (["--dry-run"], ["--max-steps", "1"]):
        code = run(["--pretrained", str(tmp_path / "diverged.pth"), "--demo-cache", demo_cache, "--workers", "0",
                    "--run-dir", str(tmp_path / "run"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and "trunk tensors hold non-finite values" in err[-1], err[-3:]
    assert not (tmp_path / "run").exists()
