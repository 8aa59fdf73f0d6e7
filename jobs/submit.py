"""Submit training runs to Slurm (or run them locally) with submitit.

    python jobs/submit.py --nodes 2 --gpus-per-node 8 --partition P -- --data /imagenet --labeled-fraction 0.01
    python jobs/submit.py --sweep jobs/sweep_1percent.yaml --gpus-per-node 8 --partition P
    python jobs/submit.py --cluster local --tasks-per-node 2 -- --labeled-fraction 0.01   # this machine, gloo on CPU
    python jobs/submit.py --dry-run --nodes 2 --gpus-per-node 8 -- --data /imagenet ...   # the sbatch script + checks
"""

import sys

try:
    import semisup  # noqa: F401 (the installed package: `pip install -e .` in the checkout)
except ModuleNotFoundError:
    sys.exit("semisup is not installed in this Python: run `pip install -e .` in the checkout")

from semisup.cluster.launch import console as submit  # noqa: E402

if __name__ == "__main__":
    sys.exit(submit())
