"""Faults as a class, generated rather than hand-picked: every setting of the config with values of
the wrong type, out of range, infinite, not a number, negative and zero; every command's numeric
options likewise; every file the project reads damaged in every way (empty, truncated, binary,
of the wrong kind, a folder). Each case must end in one line on stderr naming what is wrong and a
non-zero exit, or be accepted as a valid value; never a traceback, never a silently wrong
result. The counts are printed (RELIABILITY.md quotes them)."""
import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest
import torch
import yaml

from semisup.config import _RANGES, HELP_GROUPS, Config, _field_type, flag_spellings, parse_config
from semisup.errors import UserError
from semisup.runfiles import RunFiles

BAD_TEXT = ["abc", "", " ", "1e999x"]
NUMBERS = ["inf", "-inf", "nan", "-1", "0", "-0.5", "1e400", "1.5"]


def setting_cases():
    """(flag, value) for every command-line setting and every kind of bad or edge value."""
    cases = []
    for f in dataclasses.fields(Config):
        if not f.metadata["cli"]:
            continue
        kind = _field_type(f)
        flag = flag_spellings(f.name)[-1]
        if kind is bool:
            cases.append((f.name, [flag, "yes"]))  # a boolean flag takes no value
        elif typing.get_origin(kind) is list:
            cases += [(f.name, [flag, v]) for v in ("abc", "inf", "nan", "-1")]
        elif f.metadata["choices"]:
            cases += [(f.name, [flag, v]) for v in ("bogus", "", f.metadata["choices"][0].upper())]
        elif kind in (int, float):
            cases += [(f.name, [flag, v]) for v in BAD_TEXT + NUMBERS]
        else:  # free text and paths: a path that does not exist is checked where it is read (below)
            cases.append((f.name, [flag]))  # the value missing
    return cases


@pytest.mark.slow
def test_every_setting_refuses_what_cannot_run_and_accepts_only_valid_values(capsys):
    refused = accepted = 0
    for key, argv in setting_cases():
        try:
            cfg = parse_config(argv)
        except UserError as err:
            assert "\n" not in str(err) and str(err), (argv, str(err))
            refused += 1
            continue
        # Accepted: the value must be one a run can use, finite and within its documented range.
        value = getattr(cfg, key)
        numbers = value if isinstance(value, (list, tuple)) else [value]
        assert all(not isinstance(x, float) or math.isfinite(x) for x in numbers), (argv, value)
        rule = _RANGES.get(key)
        assert rule is None or value is None or rule[0](value), (argv, value)
        accepted += 1
    print(f"settings: {refused + accepted} generated cases, {refused} refused in one line, {accepted} valid values accepted")
    assert refused > 5 * len(HELP_GROUPS)


def cli_cases(tmp_path):
    """(command, argv) for every command's numeric options with bad values, and paths that are
    missing, folders or binary."""
    from semisup.tools import bench
    binary = tmp_path / "binary.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    from semisup import evaluate
    from semisup.cluster import launch
    cases = []
    # Every numeric option, read from each command's own parser (a new option is covered without a test edit).
    parsers = {"evaluate": evaluate.build_parser(), "bench": bench.build_parser(), "submit": launch.build_parser()}
    numeric = {command: [a.option_strings[0] for a in parser._actions if a.type in (int, float) and a.option_strings]
               for command, parser in parsers.items()}
    assert all(len(flags) >= 5 for flags in numeric.values()), numeric
    prefix = {"evaluate": ["--weights", str(binary), "--arch", "resnet18"], "bench": ["plan"], "submit": ["--dry-run"]}
    for command, flags in numeric.items():
        for flag in flags:
            if flag == "--labeled-fraction":  # a fraction: its own values below
                cases += [(command, prefix[command] + [flag, v]) for v in ("0", "-0.5", "2", "nan")]
                continue
            zero_is_valid = flag in ("--workers", "--gallery", "--gpus-per-node")
            for value in ("abc", "-5", "-1" if zero_is_valid else "0", "1.5", "nan"):
                cases.append((command, prefix[command] + [flag, value]))
    for bad in (tmp_path / "missing.pth", folder, binary):
        cases += [("evaluate", ["--weights", str(bad), "--arch", "resnet18"]), ("evaluate", ["--checkpoint", str(bad)]),
                  ("run", ["--pretrained", str(bad), "--dry-run"]), ("run", ["--split-file", str(bad), "--data", str(folder), "--dry-run"]),
                  ("run", ["--config", str(bad)]), ("report", [str(bad)]), ("status", [str(bad)]),
                  ("bench", ["plan", "--rates", str(bad)]), ("submit", ["--sweep", str(bad), "--dry-run"]),
                  ("splits", ["download", "--dest", str(binary)]), ("pretrained", ["verify", "--path", str(bad)])]
    cases += [("evaluate", []), ("evaluate", ["--weights", str(binary)]), ("evaluate", ["--checkpoint", "a", "--weights", "b"]),
              ("report", []), ("bench", ["nothing"]), ("splits", ["upload"]), ("run", ["--seed", str(2**40)]),
              ("run", ["--split-seed", "-1"]), ("run", ["--recipe", "cub"])]
    del bench
    return cases


def _command(name):
    from jobs.submit import submit
    from semisup.cluster import status
    from semisup.data import splits
    from semisup.errors import cli
    from semisup.evaluate import main as evaluate
    from semisup.models import pretrained
    from semisup.run import main as run
    from semisup.tools import bench, report
    return dict(run=run, evaluate=evaluate, report=report.main, status=status.main, splits=splits.main, pretrained=pretrained.main,
                bench=cli(lambda argv: bench.main(argv) and 0), submit=submit)[name]


def test_every_command_ends_a_mistake_in_one_line_and_a_non_zero_exit(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a case writes lands in the project
    cases = cli_cases(tmp_path)
    for command, argv in cases:
        code = _command(command)(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code in (1, 2), (command, argv, code, err)
        assert len(err) >= 1 and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), (command, argv, err)
    print(f"commands: {len(cases)} generated mistakes, each one line and exit 1 or 2")


FIFO = object()  # a named pipe where a file belongs (unpacked from an archive): a reader that opens it blocks


def damaged_variants(path: Path, good: bytes, wrong_kind: bytes):
    """Write each damaged form of a file to ``path`` in turn (yielding its name): empty,
    truncated, binary, the good content with a byte that is not UTF-8, 100,000 nested brackets (a
    recursive parser's stack), of the wrong kind, a folder, a FIFO. A reader that blocks on the FIFO
    fails the test after 60 s (SIGALRM) instead of hanging it."""
    import os
    import shutil
    import signal

    def blocked(*_):
        raise AssertionError(f"{path.name} as a FIFO: its reader blocked for 60 s")
    previous = signal.signal(signal.SIGALRM, blocked)
    try:
        for name, content in (("empty", b""), ("truncated", good[: max(1, len(good) // 2)]), ("binary", bytes(range(256)) * 3),
                              ("not UTF-8", good[:8] + b"\xff\xfe" + good[8:]), ("nested", b"[" * 100_000),
                              ("wrong kind", wrong_kind), ("folder", None), ("fifo", FIFO)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            if content is None:
                path.mkdir()
            elif content is FIFO:
                os.mkfifo(path)
            else:
                path.write_bytes(content)
            signal.alarm(60)
            yield name
            signal.alarm(0)
        if path.exists() and not path.is_dir():
            path.unlink()  # the caller writes the good file back (a FIFO would block its write)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
def test_every_run_file_damaged_in_every_way_is_reported_never_a_traceback(tmp_path, demo_cache, capsys):
    """config.yaml, final.json, job.json, metrics.csv, progress.json, job-outcome.json and
    checkpoint.pt of a finished run, each damaged in turn: status and report name the file (or
    skip the run, saying why); a resume names the checkpoint."""
    from semisup.cluster import status
    from semisup.run import main as run
    from semisup.tools import report
    from semisup.train.trainer import train
    finished = tmp_path / "runs" / "done"
    train(parse_config(["--labeled-fraction", "0.02", "--epochs", "1", "--max-steps", "2", "--demo-cache", demo_cache, "--gallery", "0",
                        "--max-eval-images", "32", "--run-dir", str(finished)]))
    (finished / "job.json").write_text(json.dumps([dict(job_id="1", cluster="local", folder=str(tmp_path), stderr=str(tmp_path / "x"))]))
    final = json.loads((finished / "final.json").read_text())
    (finished / "eval.jsonl").write_text(json.dumps(dict(checkpoint="checkpoint.pt", weights_sha256=final["weights_sha256"], iauc=50.0)) + "\n")
    (finished / "job-outcome.json").write_text(json.dumps(dict(job_id="1", restarts=0, state="COMPLETED", error=None, ended="")))
    originals = {p.name: p.read_bytes() for p in finished.iterdir() if p.is_file()}
    wrong = {"job-outcome.json": b'{"job_id": ["1"], "state": 3}', "model_best.pt": originals["final.json"], "config.yaml": b"- a\n- list\n", "final.json": b'["a", "list"]', "job.json": b'{"a": "mapping"}', "metrics.csv": b"epoch\nten\n",
             "progress.json": b'{"step": "ten"}', "checkpoint.pt": originals["model_best.pt"], "eval.jsonl": b'["a", "list"]\n',
             ".lock": b'{"pid": "ten"}'}
    originals[".lock"] = json.dumps(dict(pid=1, host="elsewhere", start="0")).encode()
    # Every file RunFiles names is damaged here, but those no command reads back (a new run file
    # fails this line until it is added above).
    not_read_back = {RunFiles.GALLERY, RunFiles.LOG, RunFiles.TENSORBOARD, RunFiles.PREVIOUS}
    named = {v for k, v in vars(RunFiles).items() if k.isupper() and isinstance(v, str)}
    assert set(wrong) == named - not_read_back, named - not_read_back ^ set(wrong)
    cases = 0
    for name, wrong_kind in wrong.items():
        for variant in damaged_variants(finished / name, originals[name], wrong_kind):
            for command in (lambda: status.main([str(tmp_path / "runs")]), lambda: report.main([str(finished), "--no-galleries"])):
                code = command()
                captured = capsys.readouterr()
                assert code in (0, 1), (name, variant, code)
                assert "Traceback" not in captured.err + captured.out, (name, variant)
                cases += 1
        path = finished / name
        if path.is_dir():
            path.rmdir()
        if name != ".lock":
            path.write_bytes(originals[name])
    # A resume from a damaged checkpoint (an unfinished run: no final.json) names it and what to do;
    # so does an evaluation of it.
    (finished / "final.json").unlink()
    from semisup.evaluate import main as evaluate
    for variant in damaged_variants(finished / "checkpoint.pt", originals["checkpoint.pt"], originals["model_best.pt"]):
        if variant != "wrong kind":  # model_best.pt is a checkpoint evaluate.py reads
            code = evaluate(["--checkpoint", str(finished / "checkpoint.pt"), "--metrics", "top1", "--gallery", "0"])
            err = capsys.readouterr().err.strip().splitlines()
            assert code in (1, 2) and err and err[-1].startswith("error: ") and "checkpoint.pt" in err[-1], (variant, err)
            cases += 1
        code = run(["--labeled-fraction", "0.02", "--epochs", "1", "--max-steps", "2", "--demo-cache", demo_cache, "--gallery", "0",
                    "--max-eval-images", "32", "--run-dir", str(finished)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code in (1, 2) and err and err[-1].startswith("error: ") and "checkpoint.pt" in err[-1], (variant, err)
        cases += 1
    print(f"run files: {cases} damaged-file cases, none a traceback")


@pytest.mark.slow
def test_every_input_file_damaged_in_every_way_ends_in_one_line(tmp_path, capsys):
    """Split files, label files, VOC and CUB box files, YAML configs, sweep files, a shipped
    manifest, and the planner's rates: each damaged in turn, the command that reads it says so in
    one line."""
    from jobs.submit import submit
    from semisup.errors import cli
    from semisup.run import main as run
    from semisup.tools import bench
    from tests.imagenet_tree import make_tree
    root = tmp_path / "imagenet"
    make_tree(root, bad=False)
    flat = ["--data", str(root), "--val-boxes", str(root / "boxes"), "--arch", "resnet_tiny", "--image-size", "32", "--resize-size",
            "36", "--ch-short-side", "32", "--workers", "0", "--batch-labeled", "4", "--batch-unlabeled", "4", "--dry-run"]
    split = tmp_path / "split.txt"
    labels = tmp_path / "labels.txt"
    sweep = tmp_path / "sweep.yaml"
    config = tmp_path / "config.yaml"
    rates = tmp_path / "rates.json"
    xml = root / "boxes" / "ILSVRC2012_val_00000001.xml"
    train_names = sorted(p.name for p in (root / "train").rglob("*.JPEG"))
    val_files = sorted(p.name for p in (root / "val").iterdir())
    inputs = [
        (split, "\n".join(train_names[:4]).encode(), ("\n".join(train_names[:2] * 2)).encode(), lambda: run(flat + ["--split-file", str(split)])),
        (labels, "\n".join(f"{v} n00000001" for v in val_files).encode(), b"a b c\n", lambda: run(
            [a for a in flat if a not in ("--val-boxes", str(root / "boxes"))] + ["--labeled-fraction", "0.5", "--splits-dir",
                                                                                   str(tmp_path / "splits"), "--val-labels", str(labels)])),
        (xml, xml.read_bytes(), xml.read_bytes().replace(b"<xmax>", b"<xmax>-").replace(b"<ymax>", b"<ymax>-"),
         lambda: run(flat + ["--labeled-fraction", "0.5", "--splits-dir", str(tmp_path / "splits")])),
        (config, b"epochs: 2\n", b"- 1\n- 2\n", lambda: run(["--config", str(config), "--dry-run"])),
        (sweep, b"grid: {seed: [0]}\n", b"grid: [1, 2]\n", lambda: submit(["--sweep", str(sweep), "--dry-run", "--cluster", "local"])),
        (rates, json.dumps(dict(rates=dict(step_images_per_s=1))).encode(), b'{"rates": [1, 2]}',
         lambda: cli(lambda argv: bench.main(argv) and 0)(["plan", "--rates", str(rates)])),
    ]
    cases = 0
    for path, good, wrong_kind, command in inputs:
        for variant in damaged_variants(path, good, wrong_kind):
            code = command()
            err = capsys.readouterr().err.strip().splitlines()
            # Half a valid file can still be a valid file; an empty YAML config is a config of no settings.
            ok = code == 0 and ((variant == "truncated" and path in (config, split)) or (variant == "empty" and path == config))
            assert ok or (code in (1, 2) and err and err[-1].startswith("error: ")), (path.name, variant, code, err)
            assert not any("Traceback" in line for line in err), (path.name, variant)
            cases += 1
        if path.is_dir():
            path.rmdir()
        path.write_bytes(good)
    # The shipped start's manifest, damaged: the weights are refused, naming the manifest.
    weights = tmp_path / "start.pth"
    weights.write_bytes(Path(__file__).resolve().parents[1].joinpath("pretrained", "demo_swav_resnet_tiny.pth").read_bytes())
    manifest = tmp_path / "start.pth.json"
    for variant in damaged_variants(manifest, b'{"sha256": "0"}', b'{"no": "digest"}'):
        code = run(["--pretrained", str(weights), "--dry-run"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith("error: ") and "start.pth" in err[-1], (variant, err)
        cases += 1
    print(f"input files: {cases} damaged-file cases, each one line")


def test_a_truncated_demo_cache_is_rebuilt(tmp_path):
    from semisup.data.demo import load_demo
    first = load_demo(tmp_path, size=32, train_renders=1, val_renders=1)
    cache = next(tmp_path.glob("*.npz"))
    cache.write_bytes(cache.read_bytes()[:1000])
    again = load_demo(tmp_path, size=32, train_renders=1, val_renders=1)
    assert torch.equal(torch.from_numpy(first.train.images), torch.from_numpy(again.train.images))


def test_silent_wrong_results_are_refused_or_said(tmp_path):
    """Substitutes for an unreadable labeled image come from the labeled split; a duplicated
    split line is refused; an extreme aspect ratio is counted as unreadable; CH without boxes is
    undefined, not 0; a hand-edited config.yaml does not override the checkpoint's record."""
    import numpy as np
    from PIL import Image

    from semisup.data.boxes import BoxFileError, parse_voc_xml
    from semisup.data.datasets import FileSource, TrainDataset
    from semisup.data.splits import SplitError, read_split
    paths = []
    for i in range(4):
        p = tmp_path / f"n0_{i}.JPEG"
        Image.fromarray(np.full((40, 40, 3), 60 * i, dtype=np.uint8)).save(p)
        paths.append(str(p))
    Path(paths[1]).write_bytes(b"broken")
    source = FileSource(paths, [0, 1, 2, 3])
    labeled = TrainDataset(source, np.array([1, 3]), 32, 36, 0.5, crop=True, pair=False)  # the split: files 1 and 3
    item = labeled[(0, 0)]
    assert item["label"] == 3 and item["bad"] == 1  # file 1 is unreadable: its substitute is the split's file 3, not file 2
    split = tmp_path / "split.txt"
    split.write_text("n0_1.JPEG\nn0_3.JPEG\nn0_1.JPEG\n")
    with pytest.raises(SplitError, match=r"split.txt:3: n0_1.JPEG is listed again \(first on line 1\)"):
        read_split(split)
    Image.fromarray(np.zeros((1, 400, 3), dtype=np.uint8)).save(tmp_path / "n0_9.JPEG")
    with pytest.raises(ValueError, match="aspect ratio"):
        FileSource([str(tmp_path / "n0_9.JPEG")], [0]).load(0)
    xml = tmp_path / "box.xml"
    xml.write_text("<annotation><object><name>n0</name><bndbox><xmin>30</xmin><ymin>5</ymin><xmax>10</xmax><ymax>20</ymax>"
                   "</bndbox></object></annotation>")
    with pytest.raises(BoxFileError, match="inverted"):
        parse_voc_xml(xml)


def test_a_hand_edited_config_is_not_believed_over_the_checkpoint(tmp_path, demo_cache):
    from semisup.train.rundir import RunDirError
    from semisup.train.trainer import train
    args = ["--labeled-fraction", "0.02", "--epochs", "2", "--max-steps", "2", "--demo-cache", demo_cache, "--gallery", "0",
            "--max-eval-images", "32", "--run-dir", str(tmp_path / "run"), "--checkpoint-every", "1"]
    train(parse_config(args))
    (tmp_path / "run" / "final.json").unlink()  # unfinished, as after a kill
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(dict(saved, cgc_weight=0.5)))
    with pytest.raises(RunDirError, match="disagrees with the checkpoint's own record.*cgc_weight"):
        train(parse_config(args + ["--lambda", "0.5"]))
