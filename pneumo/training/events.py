"""What a training run or a search reports while it runs: trials starting, epochs, trials ending, the
pipeline's phases and its notes. The `pneumo` command draws them as its progress table
(pneumo/cli/progress.py); a caller that gives no `RunEvents` gets them as log lines.

Imports no Ray: train.py and tune.py report from Ray Train and Tune callbacks.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Protocol

PENDING, RUNNING, COMPLETED, STOPPED_EARLY, FAILED = "pending", "running", "completed", "stopped early", "failed"

logger = logging.getLogger("pneumo.run")


class RunEvents(Protocol):
    def trial_started(self, name: str, params: Optional[dict[str, Any]] = None) -> None: ...

    def epoch_reported(self, name: str, metrics: dict[str, Any]) -> None: ...

    def trial_ended(self, name: str, state: str, detail: str = "") -> None: ...

    def note(self, message: str) -> None:
        """A line for the person running it (addresses, results, pneumo's own messages)."""

    def phase(self, name: str) -> None:
        """The pipeline finished phase `name` (snake_case): where the run's seconds went."""

    def stop(self) -> None:
        """Training is over: no trial events follow (notes and phases may)."""


class LoggedEvents:
    """RunEvents as INFO log lines, for callers (tests, notebooks) that draw no progress of their own."""

    def trial_started(self, name: str, params: Optional[dict[str, Any]] = None) -> None:
        logger.info("%s %s %s", name, RUNNING, params or "")

    def epoch_reported(self, name: str, metrics: dict[str, Any]) -> None:
        logger.info("%s epoch %s: %s", name, metrics.get("epoch"), metrics)

    def trial_ended(self, name: str, state: str, detail: str = "") -> None:
        logger.info("%s %s%s", name, state, f": {detail}" if detail else "")

    def note(self, message: str) -> None:
        logger.info("%s", message)

    def phase(self, name: str) -> None:
        logger.debug("phase %s", name)

    def stop(self) -> None:
        """Log lines need no closing."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """`ValueError: the first line of its message`: what a person needs to see of an error."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0][:limit]}" if message else type(error).__name__
