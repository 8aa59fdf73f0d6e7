"""The files of a run folder, named in one place: the trainer writes them, the resume/refuse/
replace decision (``semisup.train.rundir``), status, report and launch read them through it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _file(name: str) -> property:
    return property(lambda self: Path(self.root) / name, doc=f"``root/{name}``")


@dataclass(frozen=True)
class RunFiles:
    """``RunFiles(run_dir).checkpoint`` is ``run_dir/checkpoint.pt``; the bare names are the upper-case constants."""
    root: Path

    FINAL = "final.json"  # the result, written last: its presence means "finished"
    CHECKPOINT = "checkpoint.pt"  # the resumable state (weights, optimiser, counters, RNG, config)
    PREVIOUS = "checkpoint.prev.pt"  # the one before, kept while the new one is written
    BEST = "model_best.pt"  # weights of the best validation top-1
    METRICS = "metrics.csv"  # one row per epoch
    EVAL = "eval.jsonl"  # appended by semisup/evaluate.py
    GALLERY = "gallery.png"
    CONFIG = "config.yaml"  # the resolved settings and the code version
    LOG = "train.log"
    TENSORBOARD = "tensorboard"
    PROGRESS = "progress.json"  # the last step line, for status
    OUTCOME = "job-outcome.json"  # written by a cluster job: what status reads instead of submitit's pickles
    JOBS = "job.json"  # the submissions of this run folder
    LOCK = ".lock"  # held by the process training in the folder
    # What a run writes into its folder: --overwrite moves these aside.
    WRITTEN = (FINAL, CHECKPOINT, PREVIOUS, BEST, METRICS, EVAL, GALLERY, CONFIG, LOG, TENSORBOARD, PROGRESS, OUTCOME)

    final, checkpoint, previous, best = _file(FINAL), _file(CHECKPOINT), _file(PREVIOUS), _file(BEST)
    metrics, eval, gallery, config, log = _file(METRICS), _file(EVAL), _file(GALLERY), _file(CONFIG), _file(LOG)
    tensorboard, progress, outcome, jobs, lock = (
        _file(TENSORBOARD), _file(PROGRESS), _file(OUTCOME), _file(JOBS), _file(LOCK),
    )
