"""Train one run: ``python semisup/run.py --labeled-fraction 0.01 [--data /path/to/imagenet]``.

Without ``--data`` it runs on the embedded demo dataset. ``--help`` lists every setting.
"""
from __future__ import annotations

import sys

try:
    import semisup  # noqa: F401 (the installed package: `pip install -e .` in the checkout)
except ModuleNotFoundError:
    sys.exit("semisup is not installed in this Python: run `pip install -e .` in the checkout")

from semisup import cpus  # noqa: E402

cpus.wait_passively()  # before torch loads OpenMP: idle threads sleep, so runs sharing a node share its cores

from semisup.config import parse_config  # noqa: E402
from semisup.errors import cli  # noqa: E402
from semisup.train.trainer import train  # noqa: E402


@cli
def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the run finished, 2 for a setting or run directory that cannot be used, 1 when
    the run failed on its inputs (one line on stderr; a bug keeps its traceback)."""
    train(parse_config(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
