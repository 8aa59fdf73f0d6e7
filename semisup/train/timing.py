"""Wall seconds per part of a run, recorded in final.json (``semisup-bench e2e`` sets them
beside the planner's prediction)."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

PARTS = ("startup", "train_steps", "data_wait", "epoch_eval", "final_eval", "checkpoints")


class PartTimes:
    """Seconds spent in each of :data:`PARTS` since this process started the run. Every part
    ends at a host-device sync (a loss check, ``.item()``, a state_dict copy), so on a GPU the
    seconds are the device's too. ``train_steps`` is the rest of the loop: compute and logging."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._loop_start: float | None = None

    @contextmanager
    def part(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def start_loop(self) -> None:
        self._loop_start = time.perf_counter()

    def summary(self) -> dict[str, float]:
        """{part: seconds} with ``train_steps`` = the loop's wall time minus its other parts, and ``total``."""
        out = {name: self.seconds.get(name, 0.0) for name in PARTS}
        if self._loop_start is not None:
            loop = time.perf_counter() - self._loop_start
            out["train_steps"] = max(
                0.0, loop - sum(out[n] for n in ("data_wait", "epoch_eval", "final_eval", "checkpoints"))
            )
        out = {k: round(v, 3) for k, v in out.items()}
        out["total"] = sum(out[n] for n in PARTS)  # of the rounded parts: the parts add up to it
        return out
