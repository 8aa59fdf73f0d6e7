"""A run folder received from someone else is data: no command that reads it imports a module its
files name, and no string from its files reaches the terminal with its control characters."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A module that would run on import: it leaves a marker file where the test looks.
TROJAN = """
import os
open(os.environ["TROJAN_MARKER"], "a").write("imported\\n")
"""


def run(*argv: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def received(tmp_path_factory, demo_cache):
    """A finished demo run whose config.yaml and checkpoint both name the module ``trojan_mod``,
    importable from PYTHONPATH: only the run's files ask for it."""
    tmp = tmp_path_factory.mktemp("received")
    run_dir = tmp / "run"
    argv = ["--labeled-fraction", "0.05", "--max-steps", "1", "--batch-labeled", "8", "--batch-unlabeled", "8",
            "--group-size", "8", "--arch", "resnet_tiny", "--workers", "0", "--gallery", "0", "--max-eval-images", "8",
            "--demo-cache", demo_cache, "--run-dir", str(run_dir)]
    out = run("semisup/run.py", *argv, env={})
    assert out.returncode == 0, out.stderr[-2000:]
    modules = tmp / "modules"
    modules.mkdir()
    (modules / "trojan_mod.py").write_text(TROJAN)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(config, plugins="trojan_mod"), sort_keys=False))
    for name in ("checkpoint.pt", "model_best.pt"):
        state = torch.load(run_dir / name, weights_only=True)
        state["config"]["plugins"] = "trojan_mod"
        torch.save(state, run_dir / name)
    marker = tmp / "imported.txt"
    return run_dir, argv, dict(PYTHONPATH=str(modules), TROJAN_MARKER=str(marker)), marker


@pytest.mark.slow
def test_no_command_reading_a_received_run_imports_the_modules_its_files_name(received):
    run_dir, argv, env, marker = received
    commands = {
        "report": ("semisup/report.py", str(run_dir), "--no-galleries"),
        "evaluate": ("semisup/evaluate.py", "--checkpoint", str(run_dir / "checkpoint.pt"), "--metrics", "top1",
                     "--gallery", "0", "--out", str(run_dir.parent / "eval")),
        "status": ("jobs/status.py", str(run_dir)),
        "resume": ("semisup/run.py", *argv, "--dry-run"),
        "best model": ("semisup/evaluate.py", "--checkpoint", str(run_dir / "model_best.pt"), "--metrics", "top1",
                       "--gallery", "0", "--out", str(run_dir.parent / "eval")),
    }
    for name, command in commands.items():
        out = run(*command, env=env)
        assert not marker.exists(), f"{name} imported the module the run's files name"
        assert "Traceback" not in out.stderr, (name, out.stderr[-2000:])
        if name in ("report", "evaluate"):
            # Read, with one line saying which plugin was not loaded and how to load it.
            assert out.returncode == 0, (name, out.stderr[-2000:])
            assert "trojan_mod, not loaded" in out.stderr and "--plugins trojan_mod" in out.stderr, (name, out.stderr)
    # The module does import when the user names it: the test above could have failed.
    out = run("semisup/report.py", str(run_dir), "--no-galleries", "--plugins", "trojan_mod", env=env)
    assert out.returncode == 0 and marker.read_text() == "imported\n", out.stderr[-2000:]
    assert "not loaded" not in out.stderr


@pytest.mark.slow
def test_text_from_a_received_run_reaches_the_terminal_with_its_control_characters_escaped(tmp_path):
    """A run folder whose name and files hold escape sequences (one clears the screen): report and
    status print them escaped, in one line each."""
    run_dir = tmp_path / "run\x1b[2J"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("epochs: 1\n")
    (run_dir / "final.json").write_text('{"method": "\\u001b]0;owned\\u0007", "final": 3}')
    (run_dir / "job.json").write_text(json.dumps([dict(job_id="7\x1b[31m", cluster="local", folder=str(tmp_path),
                                                       stderr=str(tmp_path / "log\x1b[5m"))]))
    for command in (("semisup/report.py", str(run_dir)), ("jobs/status.py", str(run_dir))):
        out = run(*command, env={})
        assert "\x1b" not in out.stdout + out.stderr and "\x07" not in out.stdout + out.stderr, (command, out)
        assert "Traceback" not in out.stderr, out.stderr
        assert "\\x1b[2J" in out.stdout + out.stderr, (command, out)  # shown, escaped


def test_a_local_job_whose_pid_now_belongs_to_another_process_is_not_running(tmp_path):
    """The job id of a local job is its pid; after the job ended the pid can belong to another
    process. The record's process start time tells them apart."""
    from semisup.cluster.status import job_state
    from semisup.train.runlock import boot_id, process_start
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = dict(job_id=str(alive.pid), cluster="local", stderr=str(tmp_path / "log"), boot=boot_id(),
                      process_start=process_start(alive.pid))
        assert job_state(record, tmp_path)["scheduler"] == "RUNNING"
        reused = dict(record, process_start=record["process_start"] - 1)  # the job's process started earlier
        assert job_state(reused, tmp_path)["scheduler"] == "DIED"
        rebooted = dict(record, boot="another-boot")
        assert job_state(rebooted, tmp_path)["scheduler"] == "DIED"
        older = {k: v for k, v in record.items() if k not in ("boot", "process_start")}  # a record from before
        assert job_state(older, tmp_path)["scheduler"] == "RUNNING"
    finally:
        alive.kill()
        alive.wait()


def _finished_run(folder: Path, *argv: str, **final) -> Path:
    """A finished run's two files as report.py reads them (no training)."""
    from semisup.config import parse_config, save_config
    folder.mkdir(parents=True)
    save_config(parse_config(["--labeled-fraction", "0.05", "--run-dir", str(folder), *argv]), folder / "config.yaml")
    (folder / "final.json").write_text(json.dumps(dict(
        method="cgc", final=dict(top1=50.0, top5=90.0, ch=40.0), best=None, steps=10, scheduled_steps=10,
        dataset_digest="demo-v3", **final)))
    return folder


@pytest.mark.slow
def test_runs_that_look_alike_but_are_not_are_never_seeds_of_one_row(tmp_path):
    from semisup.tools.report import load_runs
    starts = []
    for k in (1, 2):  # two different start files that share a name
        start = tmp_path / f"lab{k}" / "start.pth"
        start.parent.mkdir()
        start.write_bytes(b"")
        starts.append(start)
    a = _finished_run(tmp_path / "a", "--pretrained", str(starts[0]), pretrained_sha256="a" * 64)
    b = _finished_run(tmp_path / "b", "--pretrained", str(starts[1]), pretrained_sha256="b" * 64)
    runs = load_runs([a, b])
    assert len(runs) == 2 and runs["start"].nunique() == 2 and all("start [" in s for s in runs["start"])
    # The same settings and seed otherwise: one run is a rerun of the other (the newer counted)...
    c = _finished_run(tmp_path / "c", "--pretrained", str(starts[0]), pretrained_sha256="a" * 64)
    assert len(load_runs([a, c])) == 1
    # An older run recorded only the start's path: not proven the same start, and labelled so.
    old = _finished_run(tmp_path / "old", "--pretrained", str(starts[0]))
    labels = sorted(load_runs([a, old])["start"])
    assert labels == ["start [aaaaaaaa]", f"start [path {starts[0].resolve()}, older run]"]
    # ...unless they differ in a setting this version does not know (written by a newer one).
    config = yaml.safe_load((c / "config.yaml").read_text())
    (c / "config.yaml").write_text(yaml.safe_dump(dict(config, future_knob=3)))
    out = run("semisup/report.py", str(a), str(c), env={})
    assert out.returncode == 0 and "settings this version does not know (future_knob)" in out.stderr, out.stderr
    assert len(load_runs([a, c], quiet=True)) == 2


def test_a_saved_config_with_keys_that_are_not_names_is_read(tmp_path):
    """A received config.yaml with `1: x` and `null: 1` beside the settings: the report reads the run
    (its unknown settings told apart as text), no TypeError."""
    from semisup.tools.report import load_runs
    a = _finished_run(tmp_path / "a")
    (a / "config.yaml").write_text((a / "config.yaml").read_text() + "1: x\nnull: 1\n")
    runs = load_runs([a, _finished_run(tmp_path / "b")], quiet=True)
    assert len(runs) == 2


def test_a_metric_evaluated_after_the_run_reaches_the_report_with_its_image_count(tmp_path, capsys):
    """report.py read only IAUC/DAUC from eval.jsonl: a metric the run did not compute itself (a
    plugin's, added later; here the pointing game) evaluated on its final weights was never shown."""
    from semisup.tools.report import limited_label_table, load_runs
    run = _finished_run(tmp_path / "a", weights_sha256="f" * 64)
    rows = [dict(weights_sha256="f" * 64, pointing_game=61.5, images=300, validation=718),
            dict(weights_sha256="0" * 64, pointing_game=99.0, images=718, validation=718)]  # other weights: left out
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = limited_label_table(load_runs([run]))
    assert table.iloc[0]["Pointing"] == "61.50", table.iloc[0].to_dict()
    assert "Pointing on 300 of 718 val images" in str(table.iloc[0]["Seeds"])
    # The run's own number wins over a later evaluation of the same metric.
    own = _finished_run(tmp_path / "b", weights_sha256="f" * 64)
    final = json.loads((own / "final.json").read_text())
    final["final"]["pointing_game"] = 40.0
    (own / "final.json").write_text(json.dumps(final))
    (own / "eval.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert limited_label_table(load_runs([own])).iloc[0]["Pointing"] == "40.00"
