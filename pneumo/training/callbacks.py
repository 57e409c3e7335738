"""The Ray Train callback that runs in the Train controller process: each epoch to MLflow, the run's
log and the driver's progress table.

A module of its own because the controller unpickles its callbacks, importing their module: from
here that is Ray Train and MLflow, not pneumo.training.train's timm, torchvision and scikit-learn (~1.7 s of
CPU on this project's 2-core machine, paid again by every Tune trial's controller).
"""

from __future__ import annotations

import time
from typing import Any, Optional

from ray.train import UserCallback
from ray.util.queue import Queue

from pneumo.tracking import log_epoch_metrics, record_worker_failure


class EpochLogger(UserCallback):
    """Runs in the Ray Train controller: logs rank 0's metrics of each epoch to one MLflow run, prints
    one line per epoch (it reaches the run's log) and, given an `events` queue, sends the epoch to the
    driver's progress table."""

    def __init__(self, tracking_uri: str, run_id: str, epochs: int, label: str = "", events: Optional[Queue] = None):
        self.tracking_uri, self.run_id, self.epochs, self.label = tracking_uri, run_id, epochs, label
        self.events = events
        self.last_report_s: Optional[float] = None
        self.failures = 0

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        log_epoch_metrics(self.tracking_uri, self.run_id, metrics[0])
        if self.events is not None:
            self.events.put(("epoch", metrics[0]))
        print(self._progress_line(metrics[0]), flush=True)

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        """A worker died or raised: record it in MLflow; Ray Train restarts the worker group from the
        latest checkpoint while scaling.max_failures allows."""
        self.failures += 1
        summary = "; ".join(
            f"rank {rank}: {type(error).__name__}: {str(error)[:300]}"
            for rank, error in sorted(worker_exceptions.items())
        )
        record_worker_failure(self.tracking_uri, self.run_id, self.failures, summary)
        line = f"{self.label}worker failure {self.failures}: {summary.splitlines()[0][:200]}"
        if self.events is not None:
            self.events.put(("note", line))
        print(line, flush=True)

    def _progress_line(self, m: dict[str, Any]) -> str:
        now = time.monotonic()
        epoch_s = now - self.last_report_s if self.last_report_s is not None else None
        self.last_report_s = now
        left = f", ~{epoch_s * (self.epochs - m['epoch'] - 1):.0f} s left" if epoch_s else ""
        return (
            f"{self.label}epoch {m['epoch'] + 1}/{self.epochs}  train_loss {m['train_loss']:.4f}  "
            f"val_loss {m['val_loss']:.4f}  val_auroc {m['val_auroc']:.4f}  "
            f"{m['train_images_per_s']:.0f} img/s/worker{left}"
        )
