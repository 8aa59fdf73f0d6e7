"""The job that runs on the node: ``TrainJob(run_py_flags)()`` trains one run (all tasks of it).

submitit pickles the job object into the job's folder at submission and calls it on every task.
It runs the same entry point as ``semisup/run.py`` (:func:`semisup.train.trainer.train`), sets up
torch.distributed from submitit's environment (``TorchDistributedEnvironment``, never torchrun),
and writes its own account of how it ended into the run folder (``job-outcome.json``), which
``semisup-status`` reads instead of submitit's pickles. How a job ends:

- trained to the end: COMPLETED;
- stopped by a signal (:mod:`semisup.train.preemption`) after writing its checkpoint: STOPPED,
  exit code 128 + the signal; Slurm's requeue, submitit's (``checkpoint()``), or a resubmission of
  the same command resumes it;
- requeued after it had finished (``scontrol requeue``, a late preemption): nothing to do, COMPLETED;
- anything else: FAILED, with the error.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from semisup import scheduler
from semisup.errors import UserError
from semisup.files import read_json, write_json_atomic
from semisup.runfiles import RunFiles


class TrainJob:
    """A submitit job: ``TrainJob(run_py_flags)()`` trains one run (all tasks of it)."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)

    def __call__(self) -> dict:
        import submitit

        from semisup import cpus
        cpus.wait_passively()  # before torch loads OpenMP (nothing in this process has imported it yet)

        from semisup.config import parse_config
        from semisup.train.preemption import Preempted
        from semisup.train.trainer import train

        env = submitit.JobEnvironment()
        finished = finished_by(self.argv, str(env.job_id))
        if finished is not None:  # requeued after it finished (scontrol requeue, a late preemption): nothing to do
            print(f"{run_dir_of(self.argv)} finished under this job ({env.job_id}) already: nothing to do", flush=True)
            if env.global_rank == 0:
                record_outcome(self.argv, str(env.job_id), "COMPLETED")
            return finished
        if env.num_tasks > 1:
            # Exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for env:// init;
            # semisup.distributed.setup then calls torch.cuda.set_device(LOCAL_RANK) first thing.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        try:
            result = train(parse_config(self.argv))
        except Preempted as err:  # stopped by a signal, its checkpoint written: Slurm or a resubmission resumes it
            if env.global_rank == 0:
                record_outcome(self.argv, str(env.job_id), "STOPPED", str(err))
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None
        except Exception as err:
            if env.global_rank == 0:
                record_outcome(
                    self.argv, str(env.job_id), "FAILED", f"{type(err).__module__}.{type(err).__name__}: {err}"
                )
            raise
        if env.global_rank == 0:
            record_outcome(self.argv, str(env.job_id), "COMPLETED")
        return result

    def checkpoint(self, *args, **kwargs):
        """Preempted or timed out: resubmit the same command. The weights are not pickled here:
        the training loop's own checkpoint.pt (every --checkpoint-every steps and each epoch)
        is what the requeued job resumes from."""
        import submitit
        return submitit.helpers.DelayedSubmission(TrainJob(self.argv))


def finished_by(argv: list[str], job_id: str) -> dict | None:
    """The result of the run in ``argv``'s run folder if this very job finished it (its final.json,
    and this job the folder's latest submission), else None."""
    run_dir = run_dir_of(argv)
    if not run_dir or not RunFiles(run_dir).final.is_file() or not RunFiles(run_dir).jobs.is_file():
        return None
    try:
        history = read_json(RunFiles(run_dir).jobs, list)
        latest = history[-1] if history and isinstance(history[-1], dict) else {}
        if str(latest.get("job_id")) != job_id:
            return None
        return read_json(RunFiles(run_dir).final)
    except UserError:
        return None  # damaged records: train() says what is wrong


def record_outcome(argv: list[str], job_id: str, state: str, error: str | None = None) -> None:
    """The job's own account of how it ended, as JSON in its run directory (jobs/status.py reads
    this, never submitit's pickled result: a runs folder received from someone else must not run
    their code)."""
    run_dir = run_dir_of(argv)
    if run_dir and Path(run_dir).is_dir():
        with contextlib.suppress(OSError):  # a full disk must not hide the run's own error
            write_json_atomic(RunFiles(run_dir).outcome, dict(
                job_id=job_id, restarts=scheduler.this_job().restarts, state=state, error=error,
                ended=time.strftime("%Y-%m-%d %H:%M:%S"),
            ))


def run_dir_of(argv: list[str]) -> str | None:
    value = None
    for i, arg in enumerate(argv):  # the last occurrence wins, as in argparse
        if arg == "--run-dir" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--run-dir="):
            value = arg.split("=", 1)[1]
    return value


def with_run_dir(argv: list[str], default: Path) -> list[str]:
    """Every job gets an explicit run directory, so a requeued job resumes in it."""
    return argv if run_dir_of(argv) is not None else argv + ["--run-dir", str(default)]
