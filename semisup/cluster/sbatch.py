"""What reaches sbatch: submitit's executor with the job's resources, the exact script it writes
(the ``--dry-run`` preview), and sbatch's answer (a refusal in one line, nothing left behind).

A CPU job's script has no ``--gpus-per-node`` line, and no ``--wckey`` unless one is given.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from pathlib import Path

from semisup.errors import UsageError


def make_executor(args, folder: Path, tasks_per_node: int):
    """submitit's executor for ``args`` (jobs/submit.py's options), its logs under ``folder``."""
    import submitit

    cluster = None if args.cluster == "auto" else args.cluster
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params = dict(nodes=args.nodes, tasks_per_node=tasks_per_node, gpus_per_node=args.gpus_per_node or None,
                  cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min, name=args.name)
    params = {k: v for k, v in params.items() if v is not None}  # a CPU job has no --gpus-per-node line
    if executor.cluster == "slurm":
        slurm = dict(
            slurm_partition=args.partition, slurm_account=args.account, slurm_qos=args.qos,
            slurm_constraint=args.constraint, slurm_mem=args.mem, slurm_comment=args.comment,
            slurm_signal_delay_s=args.signal_delay_s,
            slurm_additional_parameters=dict(kv.split("=", 1) for kv in args.sbatch) or None,
        )
        params.update({k: v for k, v in slurm.items() if v is not None})
        params["slurm_wckey"] = args.wckey
    executor.update_parameters(**params)
    if executor.cluster == "slurm" and args.wckey is None:
        # submitit writes `--wckey=submitit` unless told otherwise, and AutoExecutor drops None values:
        # a None in the Slurm executor's own parameters leaves the line out of the script.
        executor._executor.parameters["wckey"] = None
    return executor


@contextlib.contextmanager
def _slurm_preview():
    """Let submitit write an sbatch script on a machine without ``srun`` (a preview only)."""
    from unittest import mock

    import submitit.slurm.slurm as slurm
    with mock.patch.object(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1)):
        yield


def sbatch_script(args, log_dir: Path, tasks_per_node: int, jobs: int) -> str:
    """The script sbatch receives for ``jobs`` jobs (several: one array), byte for byte: submitit's
    own text, with the array line and ``%A_%a`` log names its array submission adds."""
    with _slurm_preview():
        slurm_args = argparse.Namespace(**dict(vars(args), cluster="slurm"))
        executor = make_executor(slurm_args, log_dir / "%j", tasks_per_node)._executor
        if jobs > 1:  # as SlurmExecutor._internal_process_submissions does for a batch
            executor.parameters["map_count"] = jobs
        return executor._make_submission_file_text(executor._submitit_command_str, "<uid>")


def submit(executor, jobs: list, log_dir: Path) -> list:
    """Submit ``jobs`` (one array when several); sbatch's refusal becomes one line, and nothing
    the attempt wrote is left in ``log_dir``."""
    import logging

    import submitit
    before = set(log_dir.iterdir()) if log_dir.exists() else None  # submitit writes its pickles and scripts here
    quiet = logging.getLogger("submitit")
    level, quiet.level = quiet.level, logging.CRITICAL  # its "submissions are dropped" would be a second line
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's stderr too
            with executor.batch() if len(jobs) > 1 else contextlib.nullcontext():
                return [executor.submit(job) for job in jobs]
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as err:
        _remove_new(log_dir, before)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        refusal = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1] if lines else str(err))
        raise UsageError(f"sbatch refused the job: {refusal}; nothing was queued") from None
    finally:
        quiet.level = level


def _remove_new(log_dir: Path, before: set | None) -> None:
    """Remove what appeared under ``log_dir`` since ``before`` (None: log_dir did not exist)."""
    if before is None:
        shutil.rmtree(log_dir, ignore_errors=True)
        return
    for path in set(log_dir.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
