"""Faults generated from metadata, for the classes the first generator did not produce: the
environment a launcher sets (every variable of ``semisup.launchenv.VARIABLES`` with values of the
wrong kind and stale combinations), every path setting given empty, every file a run writes
replaced by a symbolic link out of its folder. Each case ends in one line naming what is wrong and
a non-zero exit, never a traceback, a hang or a write outside the run folder. The counts are
printed (RELIABILITY.md quotes them)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semisup import launchenv
from semisup.config import flag_spellings, parse_config, path_fields
from semisup.errors import UserError
from semisup.runfiles import RunFiles
from semisup.train.trainer import RunDirError, train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--labeled-fraction", "0.02", "--epochs", "1", "--batch-labeled", "32", "--batch-unlabeled", "32",
         "--max-eval-images", "32", "--gallery", "0", "--max-steps", "1"]
BAD = {"int": ["abc", "", " ", "1.5", "-1", "1e3", "0x10"], "port": ["0", "65536", "-1", "http", ""],
       "host": ["", "a b", "$(reboot)", "x;y"], "job": ["", "abc", "-3", "1_2"], "tasks": ["", "x", "2(x", "2(x3", "(x2)"]}
LAUNCHER = dict(WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29400")


def environment_cases() -> list[dict]:
    """Environments (on top of a clean one) that no run can use: each variable's bad values, and
    the stale combinations a shell keeps after its launcher ended."""
    cases = []
    for name, var in launchenv.VARIABLES.items():
        values = BAD[var.kind] + ([str(var.low - 1)] if var.kind == "int" and var.low else [])
        base = dict(LAUNCHER) if name in LAUNCHER else {}
        cases += [dict(base, **{name: value}) for value in dict.fromkeys(values)]
    cases += [
        {"RANK": "1"},  # a stale rank without its run: it trained and wrote nothing
        {"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "0"}, {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h"},
        dict(LAUNCHER, RANK="2"), dict(LAUNCHER, LOCAL_RANK="2"), dict(LAUNCHER, LOCAL_WORLD_SIZE="3"),
        dict(LAUNCHER, LOCAL_WORLD_SIZE="1", LOCAL_RANK="1"), {"LOCAL_WORLD_SIZE": "2"},
    ]
    return cases


def clean_environment(monkeypatch) -> None:
    for name in launchenv.VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
def test_every_launcher_variable_is_a_setting_refused_in_one_line(monkeypatch, demo_cache, capsys):
    cases = environment_cases()
    for env in cases:
        clean_environment(monkeypatch)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(UserError) as err:
            parse_config(QUICK + ["--demo-cache", demo_cache])  # where a run, its dry run and a submission start
        message = str(err.value)
        assert "\n" not in message and any(f"{name}=" in message for name in env), (env, message)
    print(f"environment: {len(cases)} generated cases over {len(launchenv.VARIABLES)} variables, each refused in one line")
    assert len(cases) > 4 * len(launchenv.VARIABLES)


def test_the_variables_a_launcher_sets_pass(monkeypatch, demo_cache):
    clean_environment(monkeypatch)
    for name, value in dict(LAUNCHER, LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="70",
                            SLURM_ARRAY_TASK_ID="7", SLURM_RESTART_COUNT="0", SLURM_CPUS_PER_TASK="4",
                            SLURM_NTASKS_PER_NODE="2", SLURM_TASKS_PER_NODE="2(x3),1").items():
        monkeypatch.setenv(name, value)
    env = launchenv.read()
    assert (env.world, env.rank, env.local_rank, env.master_port) == (2, 0, 1, 29400)
    assert parse_config(QUICK + ["--demo-cache", demo_cache]).batch_labeled == 32


def run_py(*argv: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in launchenv.VARIABLES}
    return subprocess.run([sys.executable, str(ROOT / "semisup" / "run.py"), *argv], env=dict(clean, **env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_a_stale_launcher_environment_ends_in_one_line_not_a_silent_run_or_a_wait(tmp_path, demo_cache):
    stale_rank = run_py(*QUICK, "--demo-cache", demo_cache, "--run-dir", str(tmp_path / "a"), env={"RANK": "1"})
    assert stale_rank.returncode == 2 and stale_rank.stderr.startswith("error: RANK=1 is set but WORLD_SIZE is not")
    assert not (tmp_path / "a").exists()  # before: exit 0 and nothing written
    # A stale WORLD_SIZE with a master address: the rendezvous says it waits, and gives up in one line.
    lonely = run_py(*QUICK, "--demo-cache", demo_cache, "--run-dir", str(tmp_path / "b"),
                    env=dict(LAUNCHER, SEMISUP_RENDEZVOUS_TIMEOUT_S="2"))
    lines = lonely.stderr.strip().splitlines()
    assert lonely.returncode == 1 and "Traceback" not in lonely.stderr, lonely.stderr
    assert lines[0] == "waiting for the 2 processes of this run at 127.0.0.1:29400 (at most 2 s)"
    assert lines[-1].startswith("error: the 2 processes of this run (WORLD_SIZE) did not all meet at 127.0.0.1:29400 "
                                "within 2 s") and len(lines) == 2
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


@pytest.mark.slow
def test_a_gpu_asked_for_where_there_is_none_is_refused_before_anything(tmp_path, demo_cache):
    import torch
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for dry in ([], ["--dry-run"]):
        out = run_py(*QUICK, "--demo-cache", demo_cache, "--run-dir", str(tmp_path / "r"), "--device", "cuda", *dry, env={})
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "torch sees 0 CUDA GPU(s)" in out.stderr
    assert not (tmp_path / "r").exists()


def test_every_path_setting_given_empty_is_refused(tmp_path, demo_cache, monkeypatch):
    clean_environment(monkeypatch)
    monkeypatch.chdir(tmp_path)
    for key in path_fields():
        flag = flag_spellings(key)[-1]
        with pytest.raises(UserError, match=rf"{flag}.*an empty path"):
            parse_config(QUICK + ["--demo-cache", demo_cache, flag, ""] if key != "demo_cache" else QUICK + [flag, ""])
    assert list(tmp_path.iterdir()) == []  # before: --run-dir '' wrote every run file here
    print(f"paths: {len(path_fields())} path settings, each refused empty")


@pytest.mark.parametrize("name", [*RunFiles.WRITTEN, RunFiles.JOBS, RunFiles.LOCK])
def test_a_run_file_linked_out_of_the_folder_is_never_written_through(tmp_path, demo_cache, monkeypatch, name):
    clean_environment(monkeypatch)
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    if name == RunFiles.TENSORBOARD:
        outside.mkdir()
    else:
        outside.write_text("someone else's\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / name).symlink_to(outside)
    with pytest.raises(RunDirError, match=rf"{name} is a symbolic link to .*outside the run folder"):
        train(parse_config(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir)]))
    assert outside.is_dir() and not any(outside.iterdir()) if name == RunFiles.TENSORBOARD else \
        outside.read_text() == "someone else's\n"


@pytest.mark.slow
def test_an_evaluation_never_appends_through_a_link(tmp_path, demo_cache, monkeypatch):
    clean_environment(monkeypatch)
    run_dir = tmp_path / "run"
    train(parse_config(QUICK + ["--demo-cache", demo_cache, "--run-dir", str(run_dir)]))
    outside = tmp_path / "notes.jsonl"
    outside.write_text("mine\n")
    (run_dir / "eval.jsonl").symlink_to(outside)
    out = subprocess.run([sys.executable, str(ROOT / "semisup" / "evaluate.py"), "--checkpoint",
                          str(run_dir / "checkpoint.pt"), "--metrics", "top1", "--gallery", "0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "symbolic link" in out.stderr, out.stderr
    assert outside.read_text() == "mine\n"


def other_value(key: str, current):
    """A value of setting ``key`` other than ``current`` (its type's, within its range)."""
    import dataclasses

    from semisup.config import Config, _field_type
    field = next(f for f in dataclasses.fields(Config) if f.name == key)
    from semisup.registry import DATA_FORMATS, EXPLAINERS
    registered = {"data_format": DATA_FORMATS, "explainer": EXPLAINERS}.get(key)
    choices = field.metadata["choices"] or (registered.names() if registered else None)
    if choices:
        return next(c for c in choices if c != current)
    if field.metadata["path"] or _field_type(field) is str:
        return "somewhere"
    from semisup.config import _RANGES
    rule = _RANGES.get(key)
    return next(v for v in ((current or 2) + 1, (current or 0.5) / 2) if rule is None or rule[0](v))  # in its range


@pytest.mark.slow
def test_every_setting_a_dataset_or_mode_never_reads_is_refused_there(tmp_path):
    """From the config's own table (UNUSED_WHERE): each setting, given where it means nothing, is
    refused naming it; the same value where it is read is accepted."""
    from semisup.config import UNUSED_WHERE, flag_spellings, make_config
    bases = [{}, {"data": str(tmp_path)}, {"labeled_fraction": 1.0}, {"data": str(tmp_path), "labeled_fraction": 1.0},
             {"data": str(tmp_path), "data_format": "fgvc-aircraft", "labeled_fraction": 1.0},
             {"data": str(tmp_path), "labeled_fraction": 0.1},
             {"data": str(tmp_path), "split_file": "half.txt"}, {"optimizer": "adamw"}]
    refused = 0

    def first_row(cfg, key):  # the row that refuses ``key`` under ``cfg``: the first that applies and lists it
        return next((row for row in UNUSED_WHERE if row[1](cfg) and key in row[2]), None)
    for row in UNUSED_WHERE:
        where, applies, keys = row
        for key in keys:
            base = next(b for b in bases if first_row(make_config(dict(b)), key) is row)
            cfg = make_config(dict(base))
            value = other_value(key, getattr(cfg, key))
            with pytest.raises(UserError, match=rf"{flag_spellings(key)[-1]}.*means nothing for {where.split(' (')[0]}"):
                make_config(dict(base, **{key: value}))
            refused += 1
            make_config(dict(base, **{key: getattr(cfg, key)}))  # its default, given: changes nothing, accepted
    print(f"unused settings: {refused} (setting, dataset or mode) cases refused")
    assert refused >= 20


def test_degenerate_method_settings_and_empty_data_are_refused_before_training(tmp_path, demo_cache, monkeypatch):
    from semisup.run import main
    from tests.imagenet_tree import WNIDS, make_tree
    clean_environment(monkeypatch)
    root = tmp_path / "imagenet"
    make_tree(root, bad=False)
    folder = ["--data", str(root), "--arch", "resnet_tiny", "--image-size", "32", "--resize-size", "36",
              "--ch-short-side", "32", "--workers", "0", "--splits-dir", str(tmp_path / "splits"), "--batch-labeled", "4",
              "--batch-unlabeled", "4", "--gallery", "0", "--epochs", "1", "--max-steps", "1"]
    no_splits_dir = folder[:folder.index("--splits-dir")] + folder[folder.index("--splits-dir") + 2:]
    labels = tmp_path / "labels.txt"
    flat, flat_one = tmp_path / "flat", tmp_path / "flat_one"
    for folder_ in (flat, flat_one):
        (folder_ / "val").mkdir(parents=True)
        (folder_ / "train").symlink_to(root / "train")
    (flat_one / "val" / "a.JPEG").write_bytes((root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").read_bytes())
    cases = {
        "--batch-unlabeled 1 ": (QUICK + ["--demo-cache", demo_cache, "--batch-unlabeled", "1"],
                                 "without a negative (InfoNCE would be 0"),
        "view smaller than its crop": (QUICK + ["--demo-cache", demo_cache, "--resize-size", "48", "--image-size", "64"],
                                       "would be zero-padded"),
        "every image labeled, --unlabeled rest": (no_splits_dir + ["--labeled-fraction", "0.9999", "--unlabeled", "rest",
                                                                   "--split-file", str(tmp_path / "all.txt")],
                                                  "none is left for the unlabeled stream"),
        "an empty validation folder": (["--data", str(flat), *folder[2:], "--labeled-fraction", "0.5"],
                                       "no validation images"),
        "a file labeled twice": (["--data", str(flat_one), *folder[2:], "--labeled-fraction", "0.5", "--val-labels",
                                  str(labels)], "listed a second time"),
    }
    (tmp_path / "all.txt").write_text("".join(f"{w}_{k}.JPEG\n" for w in WNIDS for k in range(8)))
    labels.write_text("a.JPEG n00000001\na.JPEG n00000002\n")
    for name, (argv, message) in cases.items():
        run_dir = tmp_path / f"run-{len(name)}"
        assert main(argv + ["--run-dir", str(run_dir)]) != 0, name
        assert not run_dir.exists(), name  # refused before the run folder was made (or it was removed again)
    import io
    from contextlib import redirect_stderr
    for name, (argv, message) in cases.items():
        err = io.StringIO()
        with redirect_stderr(err):
            main(argv + ["--run-dir", str(tmp_path / "again"), "--dry-run"])
        last = err.getvalue().strip().splitlines()[-1]  # after the dry run's own log lines
        assert last.startswith("error: ") and message in last and "Traceback" not in err.getvalue(), (name, last)
