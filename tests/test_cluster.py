"""What a Slurm user relies on: code snapshots, job status, the sbatch preview, a watchable run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semisup import launch, snapshot
from semisup.errors import UsageError
from semisup.status import main as status_main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--labeled-fraction", "0.02", "--epochs", "2", "--batch-labeled", "32", "--batch-unlabeled", "32", "--max-eval-images", "64",
         "--gallery", "0"]


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def make_repo(root: Path) -> Path:
    """A small git checkout with tracked code and results, and untracked runs/ and job logs."""
    for name, text in {"semisup/a.py": "x = 1\n", "jobs/submit.py": "", "results/table.md": "| a |\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (root / "runs" / "r").mkdir(parents=True)
    (root / "runs" / "r" / "checkpoint.pt").write_bytes(b"0" * 10_000)
    (root / "semisup" / "new.py").write_text("y = 2\n")  # untracked source: reported, not copied
    return root


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def test_snapshots_hold_the_tracked_code_only_and_record_the_commit(tmp_path):
    repo = make_repo(tmp_path / "repo")
    first = snapshot.take_snapshot(repo / "jobs" / "logs" / "code" / "1", repo)
    # The second snapshot is taken with the first one (and a run, and results) in the checkout.
    second = snapshot.take_snapshot(repo / "jobs" / "logs" / "code" / "2", repo)
    a, b = tree(repo / "jobs/logs/code/1"), tree(repo / "jobs/logs/code/2")
    assert a == b and first["bytes"] == second["bytes"]
    assert set(a) == {"semisup/a.py", "jobs/submit.py", snapshot.MARKER}
    assert first["untracked"] == ["semisup/new.py"]
    assert first["commit"] == git(repo, "rev-parse", "HEAD") and first["dirty"] is False
    # An edit to a tracked file goes into the snapshot, and marks it dirty.
    (repo / "semisup" / "a.py").write_text("x = 3\n")
    third = snapshot.take_snapshot(tmp_path / "3", repo)
    assert third["dirty"] is True and (tmp_path / "3" / "semisup" / "a.py").read_text() == "x = 3\n"
    # A run started from the snapshot reads its version there (the snapshot has no .git).
    assert snapshot.code_version(tmp_path / "3") == dict(commit=third["commit"], dirty=True, snapshot=str(tmp_path / "3"))


def test_the_projects_own_snapshot_leaves_out_logs_runs_and_results(tmp_path):
    files = snapshot.tracked_files(ROOT)
    assert "semisup/train.py" in files and "jobs/submit.py" in files
    assert not [f for f in files if f.startswith(("jobs/logs/", "runs/", "results/"))]


def test_crashing_local_job_shows_failed_with_its_error_and_log(tmp_path, demo_cache, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")  # exists, so it passes the pre-flight; fails when loaded
    job = launch.main(["--cluster", "local", "--log-dir", str(tmp_path / "logs"), "--run-root", str(tmp_path / "runs"),
                       "--name", "crash", "--no-snapshot", "--"] + QUICK + ["--demo-cache", demo_cache, "--pretrained", str(broken)])[0]
    assert job.exception() is not None
    capsys.readouterr()
    assert status_main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]
    assert "crash" in table and "FAILED" in table and str(job.job_id) in table
    assert "not a readable PyTorch checkpoint" in out and str(job.paths.stderr) in out
    assert Path(job.paths.stderr).is_file()


def test_dry_run_prints_the_sbatch_script_and_checks_every_job_without_queueing(tmp_path, demo_cache, capsys):
    args = ["--cluster", "slurm", "--nodes", "2", "--gpus-per-node", "8", "--timeout-min", "600", "--partition", "gpu",
            "--log-dir", str(tmp_path / "logs"), "--run-root", str(tmp_path / "runs"), "--dry-run", "--"]
    assert launch.main(args + QUICK + ["--demo-cache", demo_cache, "--batch-labeled", "64", "--batch-unlabeled", "64", "--workers", "4"]) == []
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=10",
                 "#SBATCH --signal=USR2@120", "#SBATCH --time=600", "#SBATCH --open-mode=append", "scontrol requeue"):
        assert line in out, line
    assert "dry run: nothing was trained" in out and "steps_per_epoch" in out  # run.py's own --dry-run, for the job
    assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()  # nothing queued, nothing created
    # The same checks as run.py --dry-run, before anything is queued: a missing dataset, a batch
    # the 16 tasks cannot share.
    with pytest.raises(UsageError, match="--data .*no such file"):
        launch.main(args + ["--data", str(tmp_path / "imagenet")])
    with pytest.raises(UsageError, match="not divisible by the 16 processes"):
        launch.main(args + QUICK + ["--demo-cache", demo_cache, "--batch-labeled", "40"])
    assert not (tmp_path / "logs").exists()


def test_a_run_is_watchable_in_tensorboard_and_records_its_code(tmp_path, demo_cache):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from semisup.config import parse_config
    from semisup.train import train
    run_dir = tmp_path / "run"
    result = train(parse_config(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir), "--gallery", "4",
                                         "--eval-every", "1", "--log-every", "5"]))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["code"]["commit"] == snapshot.code_version()["commit"] and "dirty" in saved["code"]
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["step"] == result["steps"] and progress["images_per_s"] > 0
    events = EventMultiplexer().AddRunsFromDirectory(str(run_dir / "tensorboard"))
    events.Reload()
    runs = events.Runs()
    images = [tag for run in runs.values() for tag in run.get("images", [])]
    assert images == ["gallery"]
    gallery_steps = [e.step for name in runs for e in (events.Images(name, "gallery") if "gallery" in runs[name].get("images", []) else [])]
    assert gallery_steps == [result["steps"] // 2, result["steps"]]  # one per evaluation (each epoch here)
    assert "step/images_per_s" in [tag for run in runs.values() for tag in run.get("scalars", [])]
    hparams = events.PluginRunToTagToContent("hparams")
    assert hparams, "the hyper-parameters with their final metrics"
    metric_tags = [tag for run in runs.values() for tag in run.get("scalars", []) if tag.startswith("hparam/")]
    assert "hparam/final_top1" in metric_tags and "hparam/final_ch" in metric_tags


def test_status_script_runs_as_a_command(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "status.py"), str(tmp_path / "empty")], capture_output=True, text=True)
    assert out.returncode == 1 and "no run directories" in out.stderr and "Traceback" not in out.stderr
