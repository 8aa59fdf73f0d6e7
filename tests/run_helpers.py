"""Helpers for tests that interrupt running trainings."""
import time
from pathlib import Path

import torch


def checkpoint_step(path: Path) -> int:
    """The step stored in a checkpoint, or -1 while there is none."""
    try:
        return torch.load(path, weights_only=True)["step"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


def wait_for_checkpoint(path: Path, step: int, timeout_s: float = 120) -> None:
    """Poll until the run at ``path`` has checkpointed at least ``step`` steps."""
    deadline = time.time() + timeout_s
    while checkpoint_step(path) < step and time.time() < deadline:
        time.sleep(0.05)
