"""A full disk under every writer: the run folder on a small tmpfs of many sizes, so that the disk
fills at a different point of the run each time (config, log, TensorBoard, metrics, the best
model, the checkpoint, the gallery, the result), and the caches on one too. Each run either
finishes, or ends in one line naming the file and the full disk, leaves no half-written file, and
finishes when rerun with room; TensorBoard and train.log, views of numbers kept elsewhere, go on
without their file. Needs root to mount a tmpfs (skipped with the reason elsewhere)."""
import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from semisup.run import main

QUICK = ["--labeled-fraction", "0.02", "--epochs", "2", "--batch-labeled", "32", "--batch-unlabeled", "32",
         "--max-eval-images", "32", "--gallery", "4", "--max-steps", "4", "--log-every", "1", "--checkpoint-every", "2",
         "--eval-every", "1"]
SIZES_KB = [4, 16, 1300, 3000, 16000]  # the disk fills at the config, the progress file, the checkpoint, the best model


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'}): the full-disk tests need one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def root_only():
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")


@pytest.mark.slow
def test_a_full_disk_at_every_point_of_a_run_ends_in_one_line_and_leaves_it_resumable(tmp_path, demo_cache):
    root_only()
    failed_on = {}
    for size in SIZES_KB:
        disk = tmp_path / f"disk{size}"
        with small_disk(disk, size):
            argv = QUICK + ["--demo-cache", demo_cache, "--run-dir", str(disk / "run")]
            code, err = run(argv)
            assert "Traceback" not in err and "--- Logging error ---" not in err, (size, err[-2000:])
            leftovers = [p.name for p in (disk / "run").glob(".*tmp*")] if (disk / "run").exists() else []
            assert not leftovers, (size, leftovers)  # nothing half-written is left for a later read to trust
            if code:
                last = err.strip().splitlines()[-1]
                assert code == 1 and last.startswith("error: No space left on device") and "disk is full" in last, (size, last)
                failed_on[size] = Path(last.split(": ", 2)[2].split(" (the disk is full")[0]).name
            # Moved to a disk with room, the same command finishes (resuming where the run got to).
            shutil.copytree(disk / "run", tmp_path / f"moved{size}", symlinks=True) if (disk / "run").exists() else None
        if (tmp_path / f"moved{size}").exists() and not (tmp_path / f"moved{size}" / "final.json").exists():
            code, err = run(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(tmp_path / f"moved{size}")])
            assert code == 0, (size, err[-2000:])
    print(f"full disk: {len(SIZES_KB)} disk sizes, the run stopped in one line on {sorted(set(failed_on.values()))}")
    assert len(set(failed_on.values())) >= 3, failed_on  # the disk filled under several writers
    assert SIZES_KB[-1] not in failed_on  # with room, the run finishes


@pytest.mark.slow
def test_tensorboard_and_train_log_on_a_full_disk_let_the_run_go_on(tmp_path, demo_cache, monkeypatch):
    """Patched writers: the event file's background thread and train.log meet a full disk."""
    import errno

    from tensorboard.summary.writer import record_writer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    code, err = run(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(tmp_path / "tb")])
    assert code == 0 and "Traceback" not in err and err.count("TensorBoard's event file could not be written") == 1, err
    assert (tmp_path / "tb" / "final.json").is_file()
    monkeypatch.undo()
    import semisup.train.logs as logs
    monkeypatch.setattr(logs.RunLogFile, "flush", full)
    code, err = run(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(tmp_path / "log")])
    assert code == 0 and "Traceback" not in err and "--- Logging error ---" not in err, err
    assert err.count("train.log could not be written (No space left on device); the log goes on in the console") == 1


@pytest.mark.slow
def test_the_caches_on_a_full_disk_fall_back_and_leave_nothing_half_made(tmp_path, monkeypatch):
    root_only()
    with small_disk(tmp_path / "small", 256) as disk:
        # The demo dataset's cache: built in memory for the run, no partial file or folder left.
        code, err = run(QUICK + ["--gallery", "0", "--demo-cache", str(disk / "demo"), "--run-dir", str(tmp_path / "a")])
        assert code == 0 and "the demo dataset could not be cached" in err and "Traceback" not in err, err[-1500:]
        assert not (disk / "demo").exists()
        # The validation cache: its file is allocated before it is mapped (no SIGBUS), top-1 decodes instead.
        code, err = run(QUICK + ["--gallery", "0", "--demo-cache", str(tmp_path / "democache"), "--val-cache",
                                 str(disk / "val"), "--run-dir", str(tmp_path / "b"), "--max-eval-images", "700"])
        assert code == 0 and "Traceback" not in err, err[-1500:]
        assert not [p for p in (disk / "val").glob("*")] if (disk / "val").exists() else True


# Every file a run writes, and whether the run goes on without it (a view of numbers kept elsewhere).
RUN_WRITERS = {".lock": False, "config.yaml": False, "train.log": True, "progress.json": False, "metrics.csv": False,
               "model_best.pt": False, "checkpoint.pt": False, "gallery.png": False, "final.json": False}


@contextlib.contextmanager
def full_disk_for(name: str):
    """Opening ``name`` (or its temporary ``.name.tmp*`` / ``name.*``) to write fails as on a full
    disk: every writer, whichever library opens the file."""
    import builtins
    import errno
    real_open, real_os_open = builtins.open, os.open

    def hit(path) -> bool:
        base = Path(os.fsdecode(path)).name if isinstance(path, (str, bytes, os.PathLike)) else ""
        return base == name or base.startswith((f".{name}.tmp", f"{name}."))

    def full(path):
        return OSError(errno.ENOSPC, "No space left on device", os.fsdecode(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if hit(file) and any(c in mode for c in "wax+"):
            raise full(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if hit(path) and flags & (os.O_WRONLY | os.O_RDWR):
            raise full(path)
        return real_os_open(path, flags, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", fake_open)
        patch.setattr(io, "open", fake_open)
        patch.setattr(os, "open", fake_os_open)
        yield


@pytest.mark.parametrize("name", list(RUN_WRITERS))
@pytest.mark.slow
def test_every_writer_on_a_full_disk_ends_in_one_line_or_goes_on(tmp_path, demo_cache, name):
    run_dir = tmp_path / "run"
    argv = QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir)]
    with full_disk_for(name):
        code, err = run(argv)
    assert "Traceback" not in err and "--- Logging error ---" not in err, err[-2000:]
    assert not list(run_dir.glob(".*tmp*")) if run_dir.exists() else True
    if RUN_WRITERS[name]:
        assert code == 0 and err.count(f"{name} could not be written") == 1, err[-1500:]
    else:
        last = err.strip().splitlines()[-1]
        assert code == 1 and last.startswith("error: No space left on device") and name in last, last
        code, err = run(argv)  # with room again, the same command finishes
        assert code == 0, err[-1500:]
    assert (run_dir / "final.json").is_file()
