"""Where every run under a folder stands, with its job's scheduler state, error and log.

    python jobs/status.py runs/imagenet-1pct
"""
import sys

try:
    import semisup  # noqa: F401 (the installed package: `pip install -e .` in the checkout)
except ModuleNotFoundError:
    sys.exit("semisup is not installed in this Python: run `pip install -e .` in the checkout")

from semisup.cluster.status import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
