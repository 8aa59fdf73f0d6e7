"""`bench e2e` once at a tiny size on the CPU: the report accounts for the run's wall time, its
predictions come from the planner, and --out holds the printed numbers (nothing about speed is asserted)."""
import json
import math
import time

import pytest

from semisup.tools import bench, e2e

TINY = ["e2e", "--arch", "resnet_tiny", "--batch", "4", "--image-size", "32", "--image-scale", "0.2", "--steps", "4",
        "--epochs", "2", "--classes", "3", "--val-per-class", "3", "--workers", "0", "--device", "cpu",
        "--repeats", "1", "--threads", "1"]


def test_e2e_report_adds_up_to_the_run_and_matches_its_json(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    started = time.perf_counter()
    report = bench.main(TINY + ["--out", str(out)])
    elapsed = time.perf_counter() - started
    printed = capsys.readouterr().out
    rows = {r["part"]: r for r in report["rows"]}
    parts = [r for r in report["rows"] if r["part"] != "total"]
    wall = report["run_wall_s"]
    # The parts (final.json's seconds plus what lies before fit) are the run's wall time, measured around train().
    assert sum(r["measured_s"] for r in parts) == pytest.approx(wall, abs=1e-6)
    assert rows["total"]["measured_s"] == wall and 0 < wall < elapsed
    assert 0 <= rows[e2e.OUTSIDE]["measured_s"] < max(0.5, 0.1 * wall)  # final.json's parts cover almost all of it
    assert report["run_seconds"]["epoch_eval"] > 0 and report["run_seconds"]["final_eval"] > 0  # top-1 twice, then full
    assert report["steps"] == 4 and report["run"]["epochs"] == 2 and report["run"]["labeled"] == 8
    predicted = [r for r in report["rows"] if r["predicted_s"] is not None]
    # The evaluation parts carry the planner's names, made from the passes the metrics declare.
    assert [r["part"] for r in predicted] == ["train steps (incl. data wait)", "per-epoch top-1",
                                              "final CH, kNN, CGC loss", "total"]
    for r in predicted:
        assert math.isfinite(r["predicted_s"]) and r["predicted_s"] > 0
        assert r["ratio"] == pytest.approx(r["measured_s"] / r["predicted_s"], rel=1e-12)
        assert r["part"] in printed and f"{r['ratio']:.2f}" in printed
    assert rows["total"]["predicted_s"] == pytest.approx(sum(r["predicted_s"] for r in predicted[:-1]))
    saved = json.loads(out.read_text())
    assert saved["rows"] == report["rows"] and saved["run_wall_s"] == wall and saved["rates"] == report["rates"]


def test_e2e_bad_option_is_one_line(capsys):
    assert bench.console(["e2e", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--steps" in err and "Traceback" not in err
