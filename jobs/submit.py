"""Submit training runs to Slurm (or run them locally) with submitit.

    python jobs/submit.py --nodes 2 --gpus-per-node 8 --partition P --timeout-min 4320 -- --data /imagenet --labeled-fraction 0.01
    python jobs/submit.py --sweep jobs/sweep_1percent.yaml --gpus-per-node 8 --partition P
    python jobs/submit.py --cluster local --tasks-per-node 2 -- --labeled-fraction 0.01     # this machine, gloo on CPU
    python jobs/submit.py --dry-run --nodes 2 --gpus-per-node 8 -- --data /imagenet ...     # the sbatch script + checks, queue nothing
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semisup.errors import cli  # noqa: E402
from semisup.launch import main  # noqa: E402

@cli
def submit(argv=None) -> int:
    main(argv)  # returns the submitted jobs (none for --dry-run)
    return 0


if __name__ == "__main__":
    sys.exit(submit())
