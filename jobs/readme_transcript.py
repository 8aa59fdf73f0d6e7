"""The README's quick-start transcript, made by running its command: written, or checked.

    python jobs/readme_transcript.py --write            # run the quick start; its table and time into README.md
    python jobs/readme_transcript.py --check RUN_DIR    # README's numbers against RUN_DIR/final.json (±0.01)

The transcript is what ``python semisup/run.py --labeled-fraction 0.01`` printed on one machine
(torch version and CPU capability recorded in a comment above it, as the invariance digests
record theirs); ``tests/test_readme_transcript.py`` reruns the command where the machine is the
same and fails when a printed number moved by more than 0.01, so the README cannot go stale.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import semisup  # noqa: F401 (the installed package: `pip install -e .` in the checkout)
except ModuleNotFoundError:
    sys.exit("semisup is not installed in this Python: run `pip install -e .` in the checkout")

from semisup.errors import Parser, UserError, cli  # noqa: E402
from semisup.files import read_json, write_text_atomic  # noqa: E402

README = ROOT / "README.md"
COMMAND = ["--labeled-fraction", "0.01"]  # the README's second command
DEFAULT_RUN_DIR = "runs/demo-cgc-frac0.01-seed0"  # what the transcript shows (the run itself used --run-dir)
TOLERANCE = 0.01
# The comment above the transcript's block, then the block (``` fences).
MARK = re.compile(r"<!-- quick-start transcript: (?P<meta>\{.*?\}) -->\n```\n(?P<block>.*?)```\n", re.S)
TIME = re.compile(r"it took \d+ s \(wall, demo cached, \d{4}-\d\d-\d\d\)")


def machine() -> dict:
    import torch
    return dict(torch=torch.__version__, cpu=torch.backends.cpu.get_cpu_capability())


def transcript(text: str = None) -> tuple[dict, str]:
    """(the recorded machine, the transcript block) of the README."""
    found = MARK.search(text if text is not None else README.read_text())
    if not found:
        raise UserError(f"{README}: no '<!-- quick-start transcript: {{...}} -->' block; run --write")
    return json.loads(found["meta"]), found["block"]


def printed_numbers(block: str) -> dict[str, dict[str, float]]:
    """{'final': {console column: value}, 'best': ...} from the transcript's table rows."""
    lines = block.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    titles = re.split(r"\s{2,}", header.strip())[1:]  # column titles may hold one space ("CH strict")
    out = {}
    for line in lines:
        kind = re.match(r"cgc 0\.01 (final|best\*) ", line)
        if kind:  # a cell is one token (a number, '–'): the row's last len(titles) tokens
            cells = line.split()[-len(titles):]
            out[kind[1].rstrip("*")] = {t: float(v) for t, v in zip(titles, cells) if v not in ("–", "non-finite")}
    return out


def compare(block: str, final: dict) -> list[str]:
    """The transcript's numbers that differ from ``final`` (a run's final.json) by more than TOLERANCE."""
    from semisup.registry import METRICS
    key = {m.console: m.name for m in METRICS.in_order() if m.console}
    problems = []
    for row, numbers in printed_numbers(block).items():
        values = final.get(row) or {}
        for title, shown in numbers.items():
            actual = values.get(key[title])
            if actual is None or abs(round(actual, 4 if title == "CGC loss" else 2) - shown) > TOLERANCE:
                problems.append(f"{row} {title}: README {shown}, the run {actual}")
    return problems


def write(run_dir: Path) -> None:
    """Run the quick start into ``run_dir`` (timed) and write its table into README.md."""
    start = time.monotonic()
    out = subprocess.run([sys.executable, str(ROOT / "semisup" / "run.py"), *COMMAND, "--run-dir", str(run_dir)],
                         capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - start
    if out.returncode != 0:
        raise UserError(f"the quick start failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
    lines = out.stdout.splitlines()
    block = "\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("method")):])
    block = block.replace(str(run_dir), DEFAULT_RUN_DIR).replace(str(run_dir.parent), "runs") + "\n"
    text = README.read_text()
    meta = json.dumps(machine())
    replaced = MARK.sub(lambda _: f"<!-- quick-start transcript: {meta} -->\n```\n{block}```\n", text, count=1)
    if replaced == text and MARK.search(text) is None:
        raise UserError(f"{README}: no '<!-- quick-start transcript: {{...}} -->' block to replace")
    replaced = TIME.sub(f"it took {seconds:.0f} s (wall, demo cached, {time.strftime('%Y-%m-%d')})",
                        replaced, count=1)
    write_text_atomic(README, replaced)
    print(f"README.md: the transcript of a {seconds:.0f} s run on {meta}")


@cli
def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help="run the quick start and write its transcript")
    action.add_argument("--check", type=Path, metavar="RUN_DIR", help="compare the transcript with a run's final.json")
    args = parser.parse_args(argv)
    if args.write:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp) / "runs" / "quickstart")
        return 0
    recorded, block = transcript()
    final = read_json(args.check / "final.json")
    problems = compare(block, final)
    if problems:
        print(f"error: the README's transcript is stale ({'; '.join(problems)}); run {Path(__file__).name} --write "
              f"(recorded on {recorded})", file=sys.stderr)
        return 1
    print(f"README transcript matches {args.check}/final.json within {TOLERANCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
