"""What a Slurm user relies on: code snapshots, job status, the sbatch preview, a watchable run."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semisup.cluster import launch, snapshot
from semisup.cluster.status import main as status_main
from semisup.errors import UsageError, UserError
from semisup.runfiles import RunFiles

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
    assert "semisup/train/trainer.py" in files and "jobs/submit.py" in files
    assert not [f for f in files if f.startswith(("jobs/logs/", "runs/", "results/"))]


@pytest.mark.slow
def test_crashing_local_job_shows_failed_with_its_error_and_log(tmp_path, capsys):
    from tests.imagenet_tree import make_tree
    root = tmp_path / "imagenet"
    make_tree(root)  # holds a truncated training JPEG: found by training, not by the checks before queueing
    flags = ["--data", str(root), "--val-boxes", str(root / "boxes"), "--arch", "resnet_tiny", "--image-size", "32", "--resize-size", "36", "--ch-short-side", "32",
             "--workers", "0", "--labeled-fraction", "1.0", "--lambda", "0", "--batch-labeled", "24", "--epochs", "1",
             "--max-bad-fraction", "0", "--gallery", "0", "--log-every", "1"]
    job = launch.main(["--cluster", "local", "--log-dir", str(tmp_path / "logs"), "--run-root", str(tmp_path / "runs"),
                       "--name", "crash", "--no-snapshot", "--"] + flags)[0]
    assert job.exception() is not None
    capsys.readouterr()
    assert status_main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]
    assert "crash" in table and "FAILED" in table and str(job.job_id) in table
    assert "BadDataError" in out and "unreadable images" in out and str(job.paths.stderr) in out
    assert Path(job.paths.stderr).is_file()
    # The status came from the job's own JSON record, not from submitit's pickled result.
    outcome = json.loads((tmp_path / "runs" / "crash" / RunFiles.OUTCOME).read_text())
    assert outcome["job_id"] == str(job.job_id) and outcome["state"] == "FAILED"


@pytest.mark.slow
def test_dry_run_prints_the_sbatch_script_and_checks_every_job_without_queueing(tmp_path, demo_cache, capsys, monkeypatch):
    # No sbatch on this machine: Slurm options alone say Slurm is meant, and the preview shows its script.
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    args = ["--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu",
            "--log-dir", str(tmp_path / "logs"), "--run-root", str(tmp_path / "runs"), "--dry-run", "--"]
    from tests.imagenet_tree import make_tree
    root = tmp_path / "imagenet"
    make_tree(root, bad=False)
    folder = ["--data", str(root), "--val-boxes", str(root / "boxes"), "--arch", "resnet_tiny", "--image-size", "32",
              "--resize-size", "36", "--ch-short-side", "32", "--labeled-fraction", "0.5", "--splits-dir", str(tmp_path / "splits"),
              "--batch-labeled", "64", "--batch-unlabeled", "64", "--epochs", "2"]
    assert launch.main(args + folder) == []
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu",
                 "#SBATCH --signal=USR2@120", "#SBATCH --open-mode=append", "scontrol requeue"):
        assert line in out, line
    assert "--wckey" not in out  # off unless asked for: "Invalid wckey specification" on clusters that check them
    # CPUs within the node's budget (64 by default): 8 tasks get 8 each, the run's workers fitted to them.
    assert "#SBATCH --cpus-per-task=8" in out and "--workers 3" in out
    # The time limit comes from the planner for this run, not a fixed 72 hours.
    minutes = int(re.search(r"#SBATCH --time=(\d+)", out).group(1))
    assert re.search(rf"time limit {minutes} min = 2 x the planner's [\d.]+ min for 16 GPU\(s\)", out) and 30 <= minutes < 120
    assert "dry run: nothing was trained" in out and "steps_per_epoch" in out  # run.py's own --dry-run, for the job
    assert "checked in a snapshot of the code" in out
    assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()  # nothing queued, nothing created
    assert "bad_files_found" in out  # the dry run decoded the images, as run.py --dry-run does
    # A stated budget and explicit workers.
    launch.main(args[:-1] + ["--cpus-per-node", "96", "--timeout-min", "600", "--wckey", "cgc", "--"] + QUICK
                + ["--demo-cache", demo_cache, "--batch-labeled", "64", "--batch-unlabeled", "64", "--workers", "4"])
    out = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=10" in out and "#SBATCH --time=600" in out and "#SBATCH --wckey=cgc" in out
    # The same checks as run.py --dry-run, before anything is queued: a missing dataset, a batch
    # the 16 tasks cannot share.
    with pytest.raises(UserError, match="nowhere/train: no such folder.*nothing was queued"):
        launch.main(args + ["--data", str(tmp_path / "nowhere")])
    with pytest.raises(UsageError, match="not divisible by the 16 processes"):
        launch.main(args + QUICK + ["--demo-cache", demo_cache, "--batch-labeled", "40"])
    assert not (tmp_path / "logs").exists()


def test_the_local_executors_one_node_is_checked_in_the_dry_run(tmp_path, demo_cache):
    """submitit's local executor refuses several nodes only when it submits (a ValueError after the
    checks): the dry run says so first, and nothing is written."""
    args = ["--cluster", "local", "--nodes", "2", "--log-dir", str(tmp_path / "logs"), "--run-root", str(tmp_path / "runs")]
    for extra in (["--dry-run"], []):
        with pytest.raises(UsageError, match="--nodes 2: --cluster local runs on this machine, one node"):
            launch.main(args + extra + ["--"] + QUICK + ["--demo-cache", demo_cache])
    assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where, value", [("--name", "a\nsrun rm -rf ~"), ("--name", "it's"), ("--partition", "gpu\n#SBATCH --x"),
                                          ("--sbatch", "reservation=a;b"), ("sweep", "0.1'\necho owned")])
def test_values_that_would_break_the_sbatch_script_are_refused_before_anything_is_written(tmp_path, where, value, demo_cache):
    common = ["--log-dir", str(tmp_path / "logs"), "--run-root", str(tmp_path / "runs"), "--cluster", "slurm"]
    if where == "sweep":
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(yaml.safe_dump(dict(name="s", grid=dict(lr_head=[value]))))
        argv = common + ["--sweep", str(sweep), "--"]
    else:
        argv = common + [where, value, "--"]
    with pytest.raises(UsageError, match="nothing was written|use letters"):
        launch.main(argv + QUICK + ["--demo-cache", demo_cache])
    assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_run_is_watchable_in_tensorboard_and_records_its_code(tmp_path, demo_cache):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from semisup.config import parse_config
    from semisup.train.trainer import train
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
    assert "system/images_per_s" in [tag for run in runs.values() for tag in run.get("scalars", [])]
    hparams = events.PluginRunToTagToContent("hparams")
    assert hparams, "the hyper-parameters with their final metrics"
    metric_tags = [tag for run in runs.values() for tag in run.get("scalars", []) if tag.startswith("hparam/")]
    assert "hparam/final_top1" in metric_tags and "hparam/final_ch" in metric_tags


@pytest.mark.slow
def test_status_script_runs_as_a_command(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / "status.py"), str(tmp_path / "empty")], capture_output=True, text=True)
    assert out.returncode == 1 and "no run directories" in out.stderr and "Traceback" not in out.stderr


class _Exploit:
    """A pickle that creates a file when loaded: what a hostile result file would do."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_status_never_unpickles_and_reports_damaged_run_files_in_one_line(tmp_path, capsys):
    import pickle
    run = tmp_path / "runs" / "received"
    (tmp_path / "logs" / "4242").mkdir(parents=True)
    run.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    for name in ("4242_0_result.pkl", "4242_submitted.pkl"):
        (tmp_path / "logs" / "4242" / name).write_bytes(pickle.dumps(_Exploit(marker)))
    (run / "job.json").write_text(json.dumps([dict(job_id="4242", cluster="local", folder=str(tmp_path / "logs" / "4242"),
                                                    stderr=str(tmp_path / "logs" / "4242" / "4242_0_log.err"))]))
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "final.json").write_text("")  # a kill or a full disk while it was written (before it was atomic)
    broken = tmp_path / "runs" / "broken-record"
    broken.mkdir()
    (broken / "job.json").write_text('{"not": "a list"}')
    assert status_main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert not marker.exists()  # nothing from the received folder ran
    assert "damaged final.json" in out and "final.json: unreadable or not JSON" in out
    assert "broken-record" in out and "expected a JSON list" in out
    from semisup.tools.report import main as report_main
    assert report_main([str(run)]) == 1  # "no finished runs": the damaged one is skipped with its reason
    assert "final.json: unreadable or not JSON" in capsys.readouterr().err


def test_snapshot_keeps_tracked_links_as_links_and_copies_nothing_from_outside(tmp_path):
    repo = make_repo(tmp_path / "repo")
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not the project's")
    (repo / "semisup" / "data_link").symlink_to(secret)
    (repo / "semisup" / "folder_link").symlink_to(tmp_path / "outside")
    (repo / "semisup" / "inside_link.py").symlink_to("a.py")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "links")
    info = snapshot.take_snapshot(tmp_path / "snap", repo)
    snap = tmp_path / "snap" / "semisup"
    assert all((snap / n).is_symlink() for n in ("data_link", "folder_link", "inside_link.py"))  # nothing dropped
    assert (snap / "inside_link.py").read_text() == "x = 1\n"  # a relative link inside the code still works
    assert not [p for p in (tmp_path / "snap").rglob("*") if p.is_file() and not p.is_symlink() and p.read_text() == "not the project's"]
    assert sorted(info["links_outside"]) == ["semisup/data_link", "semisup/folder_link"]


def test_sweep_values_give_distinct_checked_run_folders(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(dict(name="s", grid=dict(lr_milestones=[[12, 16], [30, 40]], split_file=[None, "splits/x.txt"]))))
    name, commands = launch.sweep_commands(sweep, tmp_path)
    assert [n for n, _ in commands] == ["lr-milestones12-16_split-filenone", "lr-milestones12-16_split-filex",
                                        "lr-milestones30-40_split-filenone", "lr-milestones30-40_split-filex"]
    assert "--split-file" not in commands[0][1] and commands[1][1][commands[1][1].index("--split-file") + 1] == "splits/x.txt"
    sweep.write_text(yaml.safe_dump(dict(grid=dict(pretrained=["a/resnet.v1.pth", "b/resnet.v1.pth"]))))
    with pytest.raises(UsageError, match="share the run folder 'pretrainedresnet'"):
        launch.sweep_commands(sweep, tmp_path)
    sweep.write_text(yaml.safe_dump(dict(base=["--run-dir", "x"], grid=dict(seed=[0, 1]))))
    with pytest.raises(UsageError, match="--run-dir in 'base'"):
        launch.sweep_commands(sweep, tmp_path)


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:8", 8), ("gpu:a100:4(S:0-1)", 4), ("gpu:4(S:0,2)", 4),
                                        ("gpu:a100:4,gpu:v100:2", 6), ("gpu:h100:8(S:0-1),shard:8", 8)])
def test_gpus_are_counted_from_a_nodes_gres(gres, gpus):
    from semisup.cluster.partition import gpu_count
    assert gpu_count(gres) == gpus


@pytest.mark.parametrize("text, minutes", [("08:00:00", 480), ("1-00:00:00", 1440), ("30", 30), ("5:30", 6), ("2-12", 3600),
                                           ("1-2:30", 1590), ("UNLIMITED", None), ("INFINITE", None)])
def test_slurm_times_read_in_minutes_rounded_up(text, minutes):
    from semisup.cluster.partition import slurm_minutes
    assert slurm_minutes(text) == minutes


def test_submissions_in_one_second_each_reserve_their_own_code_folder(tmp_path, monkeypatch):
    """Two submissions in the same second (two scripts, two threads) each get a folder of their own,
    reserved atomically (before, the second could find its checked-free name taken and crash)."""
    import argparse
    import threading

    from semisup.cluster import launch
    monkeypatch.setattr(launch.time, "strftime", lambda fmt: "20261207-000000")
    monkeypatch.setattr("semisup.cluster.snapshot.take_snapshot",
                        lambda dest: dict(commit="0" * 40, dirty=False, files=0, bytes=0, untracked=[]))
    args = argparse.Namespace(no_snapshot=False, cluster="slurm", dry_run=False)
    got, barrier = [], threading.Barrier(4)

    def submit():
        barrier.wait()
        with launch.job_code(args, tmp_path / "logs") as (code, _):
            got.append(code)
    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 4 and all(p.is_dir() for p in got)
    assert sorted(p.name for p in got) == ["20261207-000000", "20261207-000000.2", "20261207-000000.3",
                                           "20261207-000000.4"]
