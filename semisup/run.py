"""Train one run: ``python semisup/run.py --labeled-fraction 0.01 [--data /path/to/imagenet]``.

Without ``--data`` it runs on the embedded demo dataset. ``--help`` lists every setting.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python semisup/run.py`: import the package, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from semisup.config import parse_config  # noqa: E402
from semisup.errors import cli  # noqa: E402
from semisup.train import train  # noqa: E402


@cli
def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the run finished, 2 for a setting or run directory that cannot be used, 1 when
    the run failed on its inputs (one line on stderr; a bug keeps its traceback)."""
    train(parse_config(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
