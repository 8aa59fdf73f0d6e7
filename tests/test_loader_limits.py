"""The loader's limits, met as a user meets them: a small /dev/shm (a container's), a low open-file
limit, a stream whose every image is unreadable, a worker that dies. Each ends in one line naming
the limit and the fix, or the run goes on saying what it changed; never a worker traceback or a hang."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semisup.data.loaderlimits import LoaderLimitError, guarded

ROOT = Path(__file__).resolve().parents[1]


def _demo(tmp_path, demo_cache, *extra):
    return [sys.executable, str(ROOT / "semisup" / "run.py"), "--labeled-fraction", "0.05", "--batch-labeled", "8",
            "--batch-unlabeled", "8", "--group-size", "8", "--max-eval-images", "8", "--gallery", "0", "--demo-cache",
            demo_cache, "--run-dir", str(tmp_path / "run"), *extra]


def _in_small_shm(command: list[str], megabytes: int) -> subprocess.CompletedProcess:
    """``command`` in a mount namespace whose /dev/shm is a tmpfs of ``megabytes`` (as in a container)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small /dev/shm in a mount namespace here ({probe.stderr.strip()})")
    script = f"mount -t tmpfs -o size={megabytes}m tmpfs /dev/shm && exec \"$@\""
    return subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *command], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.mark.parametrize("dry_run", [True, False])
@pytest.mark.slow
def test_a_small_dev_shm_is_refused_at_the_start_naming_the_fix(tmp_path, demo_cache, dry_run):
    dry = ["--dry-run"] if dry_run else []
    out = _in_small_shm(_demo(tmp_path, demo_cache, "--workers", "2", "--max-steps", "2", *dry), 2)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert last.startswith("error: loader: --workers 2") and "/dev/shm has" in last and "--workers 0" in last, last
    assert not (tmp_path / "run").exists()  # refused before anything was made
    fine = _in_small_shm(_demo(tmp_path, demo_cache, "--workers", "0", "--max-steps", "2", *dry), 2)
    assert fine.returncode == 0, fine.stderr[-2000:]


@pytest.mark.slow
def test_a_low_open_file_limit_is_raised_or_worked_around_and_said(tmp_path, demo_cache):
    command = " ".join(f"'{a}'" for a in _demo(tmp_path, demo_cache, "--workers", "2", "--max-steps", "3"))
    out = subprocess.run(["bash", "-c", f"ulimit -n 200 && exec {command}"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "open files: the limit (ulimit -n) is 200" in out.stderr and "shared through files" in out.stderr


@pytest.mark.slow
def test_a_stream_whose_every_image_is_unreadable_ends_in_one_line(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (data / "train" / c).mkdir(parents=True)
        (data / "val" / c).mkdir(parents=True)
        for k in range(4):
            (data / "train" / c / f"{k}.jpg").write_bytes(b"not a jpeg")
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / "val" / c / f"{k}.jpg")
    for workers in ("0", "1"):
        out = subprocess.run([sys.executable, str(ROOT / "semisup" / "run.py"), "--data", str(data), "--arch",
                              "resnet_tiny", "--image-size", "32", "--resize-size", "36", "--ch-short-side", "32",
                              "--labeled-fraction", "0.5", "--splits-dir", str(tmp_path / "splits"), "--batch-labeled",
                              "2", "--batch-unlabeled", "2", "--group-size", "2", "--workers", workers, "--max-steps",
                              "1", "--pretrained", "none", "--run-dir", str(tmp_path / f"run{workers}")],
                             capture_output=True, text=True, timeout=600, cwd=ROOT)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert last.startswith("error: ") and "no readable image among this stream's" in last, last


def test_a_dead_worker_ends_the_run_in_one_line():
    def dying():
        yield {"batch": 1}
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
    stream = guarded(dying(), "unlabeled")
    assert next(stream) == {"batch": 1}
    with pytest.raises(LoaderLimitError, match=r"^unlabeled stream: a loader worker died \(DataLoader worker \(pid\(s\) "
                                               r"4242\) exited unexpectedly\); .*--workers 0"):
        next(stream)
    bus = guarded(iter(_raising(RuntimeError("DataLoader worker (pid 7) is killed by signal: Bus error. It is possible "
                                             "that dataloader's workers are out of shared memory."))), "labeled")
    with pytest.raises(LoaderLimitError, match="/dev/shm is too small"):
        next(bus)


def _raising(err):
    raise err
    yield
