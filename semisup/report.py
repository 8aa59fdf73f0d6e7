"""Results tables, plots and galleries from run directories: ``python semisup/report.py runs/* --out reports/``.

The tables' code is ``semisup.tools.report``; ``--help`` lists the options.
"""
import sys

try:
    import semisup  # noqa: F401 (the installed package: `pip install -e .` in the checkout)
except ModuleNotFoundError:
    sys.exit("semisup is not installed in this Python: run `pip install -e .` in the checkout")

from semisup.tools.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
