"""The checks a job makes before it is queued, run where and as the job will run.

    python -m semisup.cluster.preflight < request.json      # started by jobs/submit.py, not by hand

``jobs/submit.py`` starts this module with the job's own code (the snapshot) on the import path
and the job's working directory as its own, so a check that passes means the job starts: the
same code reads the same files from the same place. The request (JSON on stdin) is
``{"jobs": [{"name", "argv"}], "tasks", "decode_check", "out"}``; for every job the run
directory, data, split, boxes, model and pretrained trunk are checked as ``semisup.train.trainer.
check_start`` does at the start of a run (``decode_check``: also decoding images, as
``run.py --dry-run``). Each job's summary and settings go to ``out`` as JSON; the first failure
ends the checks with one ``error: job NAME: ...`` line and the failing check's exit code.
"""
from __future__ import annotations

import json
import sys

from semisup.config import parse_config, validate
from semisup.data.imagenet import shared_scans
from semisup.errors import UserError
from semisup.files import write_json_atomic
from semisup.train.logs import setup_logging
from semisup.train.summary import print_summary
from semisup.train.trainer import check_start


def check_jobs(jobs: list[dict], tasks: int, decode_check: bool) -> list[dict]:
    """[{name, summary, settings}] for each job; raises the first job's failure, naming the job."""
    checked = []
    with shared_scans():  # grid points share a dataset: scan and decode it once
        for job in jobs:
            try:
                cfg = validate(parse_config(job["argv"]), world=tasks)
                # Shared memory and open files are the job's node's: the job checks them when it starts.
                summary, _ = check_start(cfg, decode_check=decode_check, world=tasks, this_machine=False)
            except UserError as err:
                err.args = (f"job {job['name']}: {err}",)
                raise
            if decode_check:
                print(f"\n== {job['name']}: run dir {cfg.run_dir}")
                print_summary(summary)
            else:
                print(f"checked {job['name']}: {summary.get('labeled')} labeled, {summary.get('unlabeled')} unlabeled, "
                      f"{summary.get('validation')} validation images; trunk: {summary['trunk']}")
            checked.append(dict(name=job["name"], summary=summary, settings=cfg.to_dict()))
    return checked


def main() -> int:
    request = json.load(sys.stdin)
    setup_logging(False)  # warnings only: this process speaks through its summary lines
    try:
        checked = check_jobs(request["jobs"], int(request["tasks"]), bool(request["decode_check"]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    write_json_atomic(request["out"], checked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
