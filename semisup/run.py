"""Train one run: ``python semisup/run.py --labeled-fraction 0.01 [--data /path/to/imagenet]``.

Without ``--data`` it runs on the embedded demo dataset. ``--help`` lists every setting.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python semisup/run.py`: import the package, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from semisup.config import parse_config  # noqa: E402
from semisup.train import RunDirError, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    try:
        train(cfg)
    except RunDirError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
