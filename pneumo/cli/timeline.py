"""Phase marks of a `pneumo run`: one line in the run's log per phase boundary, so anyone (and
bench/overhead_bench.py) can see where the seconds before the first training step and after the last
one went, without a profiler.

    2026-11-30 04:02:55,554 pneumo.cli.timeline: ray_started 1796011375.554

The workers' side (entering the training loop, model ready, first batch) travels with epoch metrics
instead (`*_at` in pneumo/training/train.py), since worker log lines carry no time of their own and MLflow
is the one channel from the workers that outlives them: a few numbers per epoch, read by
bench/overhead_bench.py.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Optional

PREFIX = "pneumo.cli.timeline:"
_MARK = re.compile(rf"{re.escape(PREFIX)} (\w+) (\d+\.\d+)")

logger = logging.getLogger("pneumo.cli.timeline")
logger.propagate = False  # not through the "pneumo" display handler: the terminal shows the table, not these
logger.setLevel(logging.INFO)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (the run's log while `watch_run` redirects it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.setStream(sys.stderr)
        super().emit(record)


_handler = _StderrHandler()
_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
logger.addHandler(_handler)


def mark(phase: str, at: Optional[float] = None) -> None:
    """Log that `phase` (a snake_case name) ended at `at` (unix seconds; default now)."""
    logger.info("%s %s %.3f", PREFIX, phase, time.time() if at is None else at)


def read_marks(log_text: str) -> dict[str, float]:
    """The phases marked in a run's log and their unix times (the last of a phase marked twice)."""
    return {phase: float(at) for phase, at in _MARK.findall(log_text)}
