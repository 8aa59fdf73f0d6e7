"""The README's quick-start transcript is what the current code prints (issue 43): its numbers
are read back, compared with a run's final.json, and a fresh run of the command is checked
against them where the machine is the one that wrote them."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_transcript", ROOT / "jobs" / "readme_transcript.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_every_number_of_the_transcript_is_read_and_a_moved_one_is_named():
    from semisup.registry import METRICS
    tool = _tool()
    _, block = tool.transcript()
    numbers = tool.printed_numbers(block)
    header = next(line for line in block.splitlines() if line.startswith("method"))
    titles = re.split(r"\s{2,}", header.strip())[1:]
    assert set(numbers) == {"final", "best"} and all(list(row) == titles for row in numbers.values()), numbers
    key = {m.console: m.name for m in METRICS.in_order() if m.console}
    final = {row: {key[title]: value for title, value in values.items()} for row, values in numbers.items()}
    assert tool.compare(block, final) == []
    moved = json.loads(json.dumps(final))
    moved["final"]["ch"] += 0.02
    assert tool.compare(block, moved) == [f"final CH: README {numbers['final']['CH']}, the run {moved['final']['ch']}"]


@pytest.mark.slow
def test_the_quick_start_prints_the_readmes_numbers(tmp_path):
    tool = _tool()
    recorded, _ = tool.transcript()
    if recorded != tool.machine():
        pytest.skip(f"the transcript was recorded on {recorded}, this machine is {tool.machine()} (other digits)")
    run_dir = tmp_path / "quickstart"
    out = subprocess.run([sys.executable, str(ROOT / "semisup" / "run.py"), *tool.COMMAND, "--run-dir", str(run_dir)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    check = subprocess.run([sys.executable, str(ROOT / "jobs" / "readme_transcript.py"), "--check", str(run_dir)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
