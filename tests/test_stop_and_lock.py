"""Every signal that stops a run is a checkpoint; the run lock knows its owner (no Slurm needed here:
tests/test_slurm.py runs the same against a real Slurm)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semisup.cluster import launch
from semisup.config import parse_config
from semisup.train import runlock
from semisup.train.rundir import RunDirError, acquire_lock, check_lock
from semisup.train.trainer import train
from tests.test_jobs import child_pids, wait_for_step

ROOT = Path(__file__).resolve().parents[1]
LONG = ["--labeled-fraction", "0.1", "--epochs", "1", "--batch-labeled", "32", "--batch-unlabeled", "32",
        "--max-eval-images", "32", "--gallery", "0", "--workers", "0", "--log-every", "1", "--checkpoint-every", "0",
        "--max-steps", "24"]


def digest(run_dir: Path) -> str:
    return json.loads((run_dir / "final.json").read_text())["weights_sha256"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, demo_cache) -> str:
    """The weights of the uninterrupted run every interrupted one must end with."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(parse_config(LONG + ["--demo-cache", demo_cache, "--run-dir", str(run_dir)]))
    return digest(run_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
def test_sigterm_and_ctrl_c_write_a_checkpoint_and_the_same_command_resumes_to_the_same_weights(
        tmp_path, demo_cache, straight, signum):
    """The signal reaches every process of the run, loader workers too, as Slurm and a terminal send it."""
    run_dir = tmp_path / "run"
    argv = [sys.executable, str(ROOT / "semisup" / "run.py"), *LONG, "--demo-cache", demo_cache, "--run-dir", str(run_dir),
            "--workers", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_for_step(run_dir, 3)
    os.killpg(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    last = err.strip().splitlines()[-1]
    step = int(re.fullmatch(rf"error: stopped by {name} at step (\d+) after writing checkpoint.pt; rerun the same "
                            r"command to resume from it", last).group(1))
    assert 3 <= step < 24 and "Traceback" not in err
    assert not (run_dir / ".lock").exists()  # a clean stop leaves no lock behind
    resumed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(rf"resumed from .* at step {step}\b", resumed.stderr)
    assert digest(run_dir) == straight


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path, demo_cache, monkeypatch):
    """Two gloo processes (submitit's local executor): SIGTERM reaches only the second, and both
    stop after the same step with one checkpoint; the job records how it stopped; the same
    submission resumes and ends as an uninterrupted two-process run."""
    common = ["--cluster", "local", "--tasks-per-node", "2", "--log-dir", str(tmp_path / "logs"), "--run-root",
              str(tmp_path / "runs"), "--timeout-min", "10"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # each of the two processes takes its share of the cores
    flags = LONG + ["--demo-cache", demo_cache, "--max-steps", "12"]
    straight = launch.main(common + ["--name", "straight", "--"] + flags)[0]
    straight.results()
    job = launch.main(common + ["--name", "stopped", "--"] + flags)[0]
    run_dir = tmp_path / "runs" / "stopped"
    wait_for_step(run_dir, 3)
    tasks = sorted(child_pids(job._process.pid))
    assert len(tasks) == 2
    os.kill(tasks[1], signal.SIGTERM)
    with pytest.raises(Exception):
        job.results()  # no result: both tasks exited after the checkpoint
    log = (run_dir / "train.log").read_text()
    (step,) = map(int, re.findall(r"SIGTERM at step (\d+): checkpoint.pt written", log))  # said once, by the first process
    outcome = json.loads((run_dir / "job-outcome.json").read_text())
    assert outcome["state"] == "STOPPED" and f"stopped by SIGTERM at step {step}" in outcome["error"]
    again = launch.main(common + ["--name", "stopped", "--"] + flags)[0]
    assert [r["steps"] for r in again.results()] == [12, 12]
    assert re.search(rf"resumed from .* at step {step}\b", (run_dir / "train.log").read_text())
    assert digest(run_dir) == digest(tmp_path / "runs" / "straight")


# ---- the lock ------------------------------------------------------------------------------------
def write_lock(run_dir: Path, **record) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".lock").write_text(json.dumps(record))


def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    # The parent of this process lives, but started at another time than the lock says.
    parent = os.getppid()
    write_lock(tmp_path / "run", pid=parent, host=socket.gethostname(), boot=runlock.boot_id(),
               process_start=runlock.process_start(parent) + 1, heartbeat=time.time())
    lock = acquire_lock(tmp_path / "run")
    assert f"pid {parent} is now another process" in lock.took_over
    assert json.loads((tmp_path / "run" / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_lock_from_before_the_hosts_reboot_is_taken_over(tmp_path):
    write_lock(tmp_path / "run", pid=os.getppid(), host=socket.gethostname(), boot="another-boot", heartbeat=time.time())
    lock = acquire_lock(tmp_path / "run")
    assert "rebooted" in lock.took_over
    lock.release()


@pytest.mark.parametrize("age_s, alive", [(60, True), (runlock.LEASE_S + 60, False)])
def test_a_lock_from_another_host_without_a_scheduler_lives_by_its_heartbeat(tmp_path, age_s, alive):
    write_lock(tmp_path / "run", pid=1, host="another-host", job=None, scheduler=None, heartbeat=time.time() - age_s,
               lease_s=runlock.LEASE_S, started="earlier")
    if alive:
        with pytest.raises(RunDirError, match=r"in use by another run \(pid 1 on another-host, since earlier: its heartbeat"):
            check_lock(tmp_path / "run")
    else:
        lock = acquire_lock(tmp_path / "run")
        assert "its last heartbeat is 11 min old (lease 10 min)" in lock.took_over
        lock.release()


def test_two_runs_in_one_slurm_allocation_cannot_share_a_folder(tmp_path):
    """The second run of the same SLURM_JOB_ID into a folder the first (alive) holds is refused;
    once the first is gone, the same job takes its lock over (a requeued job finding its folder)."""
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from semisup.train.rundir import acquire_lock;"
         " acquire_lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(600)", str(tmp_path / "run")],
        env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_JOB_ID", "4242")
            with pytest.raises(RunDirError, match=rf"pid {holder.pid} on {socket.gethostname()}, Slurm job 4242.*the process runs"):
                acquire_lock(tmp_path / "run")
            holder.kill()
            holder.wait()
            lock = acquire_lock(tmp_path / "run")
            assert "the process is gone" in lock.took_over
            lock.release()
    finally:
        holder.kill()


def test_the_heartbeat_refreshes_the_lock_and_stops_when_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    lock = acquire_lock(tmp_path / "run")
    first = json.loads((tmp_path / "run" / ".lock").read_text())["heartbeat"]
    time.sleep(0.3)
    assert json.loads((tmp_path / "run" / ".lock").read_text())["heartbeat"] > first
    write_lock(tmp_path / "run", token="someone-else", pid=1, host="elsewhere")
    time.sleep(0.3)
    assert json.loads((tmp_path / "run" / ".lock").read_text())["token"] == "someone-else"  # never overwritten
    lock.release()
    assert (tmp_path / "run" / ".lock").exists()  # not ours to remove


def test_a_lock_that_cannot_be_read_is_never_taken_for_free(tmp_path):
    (tmp_path / "run" / ".lock").mkdir(parents=True)  # reading it fails with an OSError, as an NFS error would
    with pytest.raises(RunDirError, match=r"\.lock: the run lock cannot be read .*check the file system"):
        acquire_lock(tmp_path / "run")


def test_a_damaged_lock_is_taken_over_saying_so(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text("{not json")
    lock = acquire_lock(tmp_path / "run")
    assert lock.took_over == "a damaged lock file (not a record)"
    lock.release()


def test_a_run_whose_lock_was_taken_over_stops_without_writing_again(tmp_path, demo_cache, monkeypatch):
    """Its holder was judged gone (say, a hung file system outlived the lease) and another run took
    the folder: the first run stops at its next step instead of writing over the second's files."""
    import threading
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.05)
    run_dir = tmp_path / "run"

    def take_over():
        wait_for_step(run_dir, 2)
        write_lock(run_dir, token="newcomer", pid=1, host="elsewhere", started="just now")
    threading.Thread(target=take_over, daemon=True).start()
    with pytest.raises(RunDirError, match=r"the run lock was taken over by pid 1 on elsewhere, since just now; this run "
                                          r"stops at step \d+ and writes nothing more"):
        train(parse_config(LONG + ["--max-steps", "200", "--epochs", "5", "--demo-cache", demo_cache,
                                   "--run-dir", str(run_dir)]))
    assert json.loads((run_dir / ".lock").read_text())["token"] == "newcomer"  # left to its holder
    assert not (run_dir / "checkpoint.pt").exists()  # --checkpoint-every 0 and no epoch end: nothing written


# ---- threads -------------------------------------------------------------------------------------
def dry_run_threads(demo_cache: str, env: dict, affinity: set[int] | None = None) -> str:
    """The thread count run.py's --dry-run reports in a subprocess with ``env`` and ``affinity``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "SLURM_", "LOCAL_WORLD", "WORLD_SIZE"))}
    proc = subprocess.run([sys.executable, str(ROOT / "semisup" / "run.py"), "--labeled-fraction", "0.1", "--workers", "0",
                           "--demo-cache", demo_cache, "--dry-run"], env=dict(base, **env), capture_output=True, text=True,
                          preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"^\s+threads\s+(.*)$", proc.stdout, flags=re.M).group(1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to restrict")
@pytest.mark.slow
def test_the_thread_count_follows_the_affinity_mask_and_slurm_and_omp_num_threads_wins(demo_cache):
    cpus = len(os.sched_getaffinity(0))
    assert dry_run_threads(demo_cache, {}) == f"{cpus} per process ({cpus} CPUs (affinity {cpus}))"
    assert dry_run_threads(demo_cache, {}, affinity={0}) == "1 per process (1 CPU (affinity 1))"
    assert dry_run_threads(demo_cache, {"SLURM_CPUS_PER_TASK": "1"}) == f"1 per process (1 CPU (affinity {cpus}, SLURM_CPUS_PER_TASK 1))"
    launched = dict(WORLD_SIZE=str(cpus), RANK="0", LOCAL_WORLD_SIZE=str(cpus), MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")
    assert dry_run_threads(demo_cache, launched).startswith(f"1 per process (1 CPU (affinity {cpus} / {cpus} processes")
    assert dry_run_threads(demo_cache, {"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "1"}) == "3 per process (OMP_NUM_THREADS)"


def test_a_lock_of_an_older_format_is_judged_by_its_last_write_not_held_for_good(tmp_path):
    """A record without a heartbeat (written by an earlier version, on another host): held while
    its file was written within the lease, taken over once it is older, saying which it was."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = run_dir / ".lock"
    lock.write_text(json.dumps(dict(pid=1, host="elsewhere", started="long ago")))
    with pytest.raises(RunDirError, match="in use by another run"):
        acquire_lock(run_dir)
    old = time.time() - 2 * runlock.LEASE_S
    os.utime(lock, (old, old))
    taken = acquire_lock(run_dir)
    assert "an older format" in taken.took_over and "min old" in taken.took_over
    taken.release()
