"""Cluster jobs through submitit's own executors (local and debug; Slurm's sbatch inspected)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from semisup.cluster import launch, sbatch
from semisup.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--labeled-fraction", "0.02", "--epochs", "2", "--batch-labeled", "32", "--batch-unlabeled", "32", "--max-eval-images", "64",
         "--gallery", "0", "--eval-every", "1"]


def submit_args(tmp_path, *extra):
    return ["--log-dir", str(tmp_path / "logs"), "--run-root", str(tmp_path / "runs"), "--timeout-min", "10", *extra]


def test_sbatch_script_has_the_requested_resources(tmp_path, monkeypatch):
    import submitit.slurm.slurm as slurm
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun on this machine
    args = launch.build_parser().parse_args(["--nodes", "2", "--gpus-per-node", "8", "--partition", "learnlab", "--account", "vision",
                                             "--qos", "high", "--constraint", "volta32gb", "--mem", "480G", "--comment", "cgc",
                                             "--sbatch", "reservation=cgc", "--cluster", "slurm", "--timeout-min", "4320",
                                             "--cpus-per-task", "10"])
    executor = sbatch.make_executor(args, tmp_path / "%j", tasks_per_node=8)
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=learnlab",
                 "#SBATCH --account=vision", "#SBATCH --qos=high", "#SBATCH --constraint=volta32gb", "#SBATCH --mem=480G",
                 "#SBATCH --time=4320", "#SBATCH --signal=USR2@120", "#SBATCH --reservation=cgc", "#SBATCH --cpus-per-task=10"):
        assert line in script, (line, script)


def test_sweep_expands_the_grid_with_one_run_dir_each(tmp_path):
    name, commands = launch.sweep_commands(ROOT / "jobs" / "sweep_1percent.yaml", tmp_path)
    assert name == "imagenet-1pct" and len(commands) == 6
    dirs = {launch.run_dir_of(flags) for _, flags in commands}
    assert len(dirs) == 6 and all(d.startswith(str(tmp_path / "imagenet-1pct")) for d in dirs)
    name, flags = commands[0]
    assert name == "lambda0_seed0" and flags[flags.index("--lambda") + 1] == "0"  # grid keys are setting names or aliases
    assert "--pretrained" in flags and flags[flags.index("--labeled-fraction") + 1] == "0.01"


@pytest.mark.slow
def test_debug_cluster_runs_in_process_and_refuses_a_finished_run(tmp_path, demo_cache):
    jobs = launch.main(submit_args(tmp_path, "--cluster", "debug", "--") + QUICK + ["--demo-cache", demo_cache, "--max-steps", "3"])
    # Run in this process by main itself; the run folder is named as run.py names it.
    assert (tmp_path / "runs" / "demo-cgc-frac0.02-seed0" / "final.json").is_file()
    result = jobs[0].result()
    assert result["steps"] == 3
    status = subprocess.run([sys.executable, str(ROOT / "jobs" / "status.py"), str(tmp_path / "runs")], capture_output=True, text=True, check=True)
    assert "finished (truncated by --max-steps at step 3)" in status.stdout and "demo-cgc-frac0.02-seed0" in status.stdout
    with pytest.raises(UsageError, match="already holds a finished run"):
        launch.main(submit_args(tmp_path, "--cluster", "debug", "--") + QUICK + ["--demo-cache", demo_cache, "--max-steps", "3"])


@pytest.mark.slow
def test_local_executor_two_tasks_train_with_gloo_to_identical_weights(tmp_path, demo_cache):
    jobs = launch.main(submit_args(tmp_path, "--cluster", "local", "--tasks-per-node", "2", "--name", "two", "--")
                       + QUICK + ["--demo-cache", demo_cache, "--max-steps", "4", "--workers", "0"])
    result = jobs[0].results()  # one result per task
    assert [r["steps"] for r in result] == [4, 4]
    assert result[0]["weights_sha256"] == result[1]["weights_sha256"]
    log = (tmp_path / "runs" / "two" / "train.log").read_text()
    assert "2 process(es) on cpu" in log and "16 per process" in log
    assert "1 thread(s) per process: 1 CPU (affinity" in log and "/ 2 processes on this node)" in log  # not 2 x all cores
    # One replica of 32 images spans both processes; on CPU each normalises its own half, and says so.
    assert "BatchNorm over each process' part of a replica (a replica spans 2 processes; SyncBatchNorm needs CUDA" in log
    # The job ran from the code snapshot taken at submission.
    assert list((tmp_path / "logs" / "code").glob("*/semisup/train/trainer.py"))


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out



def wait_for_step(run_dir: Path, step: int, timeout_s: float = 180) -> int:
    """Poll the run's progress.json until it has logged ``step``; returns the step it shows."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            shown = json.loads((run_dir / "progress.json").read_text())["step"]
            if shown >= step:
                return shown
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{run_dir} did not reach step {step}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the task process through /proc")
@pytest.mark.slow
def test_sigusr2_checkpoints_at_once_and_the_requeued_job_resumes_from_that_step(tmp_path, demo_cache):
    # Periodic checkpoints off, long epochs: only the signal can write the checkpoint mid-epoch.
    flags = QUICK + ["--demo-cache", demo_cache, "--checkpoint-every", "0", "--log-every", "1", "--workers", "0",
                     "--labeled-fraction", "0.1", "--max-steps", "30"]
    straight = launch.main(submit_args(tmp_path, "--cluster", "local", "--name", "straight", "--") + flags)[0]
    straight.result()
    job = launch.main(submit_args(tmp_path, "--cluster", "local", "--name", "preempted", "--") + flags)[0]
    run_dir = tmp_path / "runs" / "preempted"
    wait_for_step(run_dir, 3)
    tasks = child_pids(job._process.pid)
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)  # what Slurm sends --signal-delay-s before preempting
    result = job.result()
    assert result["steps"] == 30
    log = (run_dir / "train.log").read_text()
    signalled = int(re.search(r"SIGUSR2 at step (\d+): checkpoint.pt written", log).group(1))
    resumed = int(re.search(r"resumed from .* at step (\d+)", log).group(1))
    assert 3 <= signalled == resumed < 30  # nothing lost: the requeued job starts where the signal came
    # ... and ends as the uninterrupted run did.
    a = json.loads((tmp_path / "runs" / "straight" / "final.json").read_text())
    b = json.loads((run_dir / "final.json").read_text())
    assert a["weights_sha256"] == b["weights_sha256"]
    drop = ["eval_seconds"]
    a_rows = pd.read_csv(tmp_path / "runs" / "straight" / "metrics.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(a_rows, pd.read_csv(run_dir / "metrics.csv").drop(columns=drop))


def test_demo_reproduction_reuses_only_runs_with_the_same_settings(tmp_path, monkeypatch):
    import importlib.util

    from semisup.config import parse_config, save_config
    spec = importlib.util.spec_from_file_location("reproduce_demo_table", ROOT / "jobs" / "reproduce_demo_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    launched = []
    monkeypatch.setattr(script.subprocess, "run", lambda cmd, check: launched.append(cmd))
    run_dir = tmp_path / "runs" / "cgc-frac0.1-seed0"  # from scratch: no 'swav-' prefix
    run_dir.mkdir(parents=True)
    scratch = script.STARTS["scratch"]
    save_config(parse_config(["--labeled-fraction", "0.1", "--run-dir", str(run_dir), *script.EVALUATIONS[0.1],
                              *scratch]), run_dir / "config.yaml")
    (run_dir / "final.json").write_text("{}")

    assert script.run(0.1, "cgc", [], 0, tmp_path, ["--workers", "2", *scratch]) == run_dir and not launched  # same settings: reused
    with pytest.raises(SystemExit, match=r"other settings \(cgc_weight\).*--rerun-stale"):
        script.run(0.1, "cgc", ["--lambda", "0.5"], 0, tmp_path, scratch)
    assert not launched
    script.run(0.1, "cgc", ["--lambda", "0.5"], 0, tmp_path, scratch, rerun_stale=True)
    assert "--overwrite" in launched[0] and launched[0][launched[0].index("--lambda") + 1] == "0.5"
    # A run made on another version of the demo dataset is not this one's result.
    import yaml
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(saved, demo_version=saved["demo_version"] - 1)))
    with pytest.raises(SystemExit, match=r"other settings \(demo_version\)"):
        script.run(0.1, "cgc", [], 0, tmp_path, ["--workers", "2", *scratch])
