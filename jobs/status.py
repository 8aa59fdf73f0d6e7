"""Where every run under a folder stands, with its job's scheduler state, error and log.

    python jobs/status.py runs/imagenet-1pct
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semisup.status import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
