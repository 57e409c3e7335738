"""What `pneumo run` shows in the terminal: one progress table for the run, everything else in its log file.

Ray, Tune and the libraries under them print a lot that is harmless (actor warnings, deprecation
notices, Tune's status tables every 30 s). `watch_run` sends the process's stdout and stderr, down to
the file descriptors Ray's C++ core writes to, into the run's log file, and gives pneumo's own output
a stream of its own on the terminal: the `RunProgress` table (state, epoch, latest and best metric,
time left per trial, drawn live with rich on a terminal, as plain lines elsewhere), pneumo's INFO log
lines, and the final results. `--verbose` leaves every stream where it was.

`RunProgress` is the CLI's RunEvents (pneumo/training/events.py): train.py and tune.py feed it from Ray
Train and Tune callbacks, and the pipeline's phases become timeline marks in the log. Imports no Ray.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pneumo.cli.timeline import mark
from pneumo.config import best_of, improves
from pneumo.training.events import FAILED, PENDING, RUNNING, first_line

REFRESH_PER_S = 2  # redraws of the live table per second
PLAIN_WIDTH = 120  # columns of the final table where the output is not a terminal


@dataclass
class TrialProgress:
    """One row of the table: a Tune trial, or the single training run."""

    name: str
    params: str = ""  # sampled search values, "train.lr=0.004"
    state: str = PENDING
    epoch: int = 0  # epochs finished
    latest: Optional[float] = None  # tune.metric at the latest epoch
    best: Optional[float] = None  # best tune.metric of any epoch
    epoch_s: Optional[float] = None  # wall seconds of the latest epoch (time between reports)
    detail: str = ""  # why a trial stopped or failed
    last_event_s: float = field(default_factory=time.monotonic)


class RunProgress:
    """The run's table: rows updated by events, drawn live on a terminal or written as one line per event
    (a RunEvents)."""

    def __init__(
        self, stream: IO[str], metric: str, mode: str, epochs: int, interactive: bool, log_path: Optional[Path] = None
    ):
        self.stream, self.metric, self.mode, self.epochs = stream, metric, mode, epochs
        self.interactive, self.log_path = interactive, log_path
        self.trials: dict[str, TrialProgress] = {}
        self.console = Console(
            file=stream,
            force_terminal=interactive,
            no_color=not interactive,
            width=None if interactive else PLAIN_WIDTH,
            highlight=False,
            soft_wrap=not interactive,
        )
        self._live: Optional[Live] = None
        self._stopped = False

    # ------------------------------------------------------------------ events
    def trial_started(self, name: str, params: Optional[dict[str, Any]] = None) -> None:
        row = self.trials.setdefault(name, TrialProgress(name))
        row.params = ", ".join(f"{k}={_short(v)}" for k, v in (params or {}).items())
        row.state, row.last_event_s = RUNNING, time.monotonic()
        self._line(f"{name} started" + (f" ({row.params})" if row.params else ""))

    def epoch_reported(self, name: str, metrics: dict[str, Any]) -> None:
        """An epoch's metrics (`epoch` counts from 0, as reported by the training loop)."""
        row = self.trials.setdefault(name, TrialProgress(name, state=RUNNING))
        now = time.monotonic()
        started, finished = metrics.get("epoch_started_at"), metrics.get("epoch_finished_at")
        # the epoch's own duration when reported (the first report also carries the workers' start-up)
        row.epoch_s = finished - started if started and finished else now - row.last_event_s
        row.last_event_s = now
        row.epoch = int(metrics["epoch"]) + 1
        value = metrics.get(self.metric)
        if isinstance(value, (int, float)):
            row.latest = float(value)
            if row.best is None or improves(row.latest, row.best, self.mode):
                row.best = row.latest
        extras = "  ".join(
            f"{key} {metrics[key]:.4f}"
            for key in ("train_loss", "val_loss", "val_auroc")
            if key != self.metric and isinstance(metrics.get(key), (int, float))
        )
        parts = [
            f"{name} epoch {row.epoch}/{self.epochs}",
            f"{self.metric} {_fmt(row.latest)}",
            f"best {_fmt(row.best)}",
            extras,
            _left(row, self.epochs),
        ]
        self._line("  ".join(part for part in parts if part))

    def trial_ended(self, name: str, state: str, detail: str = "") -> None:
        row = self.trials.setdefault(name, TrialProgress(name))
        row.state, row.detail = state, detail
        where = f" (full log: {self.log_path})" if state == FAILED and self.log_path else ""
        self._line(f"{name} {state}" + (f": {detail}" if detail else "") + where, force=state == FAILED)

    def phase(self, name: str) -> None:
        """A timeline mark in the log (pneumo/cli/timeline.py), never on the terminal."""
        mark(name)

    def note(self, message: str) -> None:
        """A line of its own above the table (pneumo's log messages, addresses, results)."""
        if self._live is not None:
            self._live.console.print(message, markup=False, highlight=False)
        else:
            self.console.print(message, markup=False, highlight=False)

    # ------------------------------------------------------------------ drawing
    def start(self) -> None:
        if self.interactive and self._live is None:
            self._live = Live(
                get_renderable=self.table,
                console=self.console,
                refresh_per_second=REFRESH_PER_S,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()

    def stop(self) -> None:
        """End the live table and print the final one (every trial's end state and best value), once."""
        if self._stopped:
            return
        self._stopped = True
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.trials:
            self.console.print(self.table(final=True))

    def best_trial(self) -> Optional[TrialProgress]:
        rated = [row for row in self.trials.values() if row.best is not None]
        if not rated:
            return None
        return best_of(rated, self.mode, lambda row: row.best)

    def table(self, final: bool = False) -> Table:
        best = self.best_trial()
        title = f"best {self.metric} {_fmt(best.best)} ({best.name})" if best else f"{self.metric}: no epoch yet"
        table = Table(
            title=title, title_justify="left", expand=False, box=box.SIMPLE_HEAD if self.interactive else box.ASCII
        )
        for column in ("trial", "state", "epoch", f"{self.metric}", "best", "time left" if not final else "params"):
            table.add_column(
                column, no_wrap=True, justify="left" if column in ("trial", "state", "params") else "right"
            )
        for row in self.trials.values():
            state = row.detail if row.detail and row.state != FAILED else row.state
            last = row.params if final else (_left(row, self.epochs) if row.state == RUNNING else "")
            table.add_row(row.name, state, f"{row.epoch}/{self.epochs}", _fmt(row.latest), _fmt(row.best), last)
        return table

    def _line(self, text: str, force: bool = False) -> None:
        """Plain output gets one line per event; the live table shows the same without a line (except failures)."""
        if self._live is None:
            self.console.print(text, markup=False, highlight=False)
        elif force:
            self._live.console.print(text, markup=False, highlight=False)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _left(row: TrialProgress, epochs: int) -> str:
    if row.epoch_s is None or row.epoch >= epochs:
        return ""
    return f"~{_duration(row.epoch_s * (epochs - row.epoch))} left"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


# ---------------------------------------------------------------------- the run's streams


def is_interactive(stream: IO[str]) -> bool:
    """A terminal a person watches: live redraws; anything else (CI, `ray job logs`, a pipe) gets plain lines."""
    return stream.isatty() and os.environ.get("TERM", "") != "dumb"


def run_log_path(folder: str | Path, name: str) -> Path:
    """`<folder>/logs/<experiment>-<YYYYmmdd-HHMMSS>.log`, the folder created."""
    path = Path(folder) / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class _DisplayHandler(logging.Handler):
    """pneumo's own log records (INFO and up) as lines above the table."""

    def __init__(self, progress: RunProgress):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.note(
            record.getMessage()
            if record.levelno < logging.WARNING
            else f"{record.levelname.lower()}: {record.getMessage()}"
        )


@contextlib.contextmanager
def watch_run(
    log_path: Optional[Path],
    metric: str,
    mode: str,
    epochs: int,
    is_user_error: Callable[[BaseException], bool] = lambda error: False,
    table: bool = True,
) -> Iterator[RunProgress]:
    """Route the process's output for one run: the table and pneumo's messages on the terminal, all the
    rest (Ray's logs, warnings, tracebacks) in `log_path`. With `log_path=None` (--verbose) nothing is
    redirected and the table is written as plain lines among Ray's own output. Commands without trials
    (`table=False`) get their notes as lines and no live table.

    An unexpected error is written whole to the log; the terminal gets one line and the log's path.
    Errors `is_user_error` accepts (a bad config, a bad dataset) pass through unchanged: the caller words those.
    A stdout without a file descriptor (pneumo called from Python with its output captured) is not redirected.
    """
    if log_path is None or not _has_file_descriptor(sys.stdout):
        progress = RunProgress(sys.stdout, metric, mode, epochs, interactive=False)
        yield progress
        progress.stop()
        return
    terminal = io.TextIOWrapper(
        os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0), line_buffering=True, write_through=True
    )
    progress = RunProgress(terminal, metric, mode, epochs, table and is_interactive(sys.stdout), log_path)
    progress.note(f"log:          {log_path}  (Ray's output; --verbose shows it here)")
    handler = _DisplayHandler(progress)
    pneumo_logger = logging.getLogger("pneumo")
    with _redirect_fds(log_path):
        pneumo_logger.addHandler(handler)
        progress.start()
        try:
            yield progress
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:
            if is_user_error(error):
                raise
            traceback.print_exc()  # into the log
            raise SystemExit(f"pneumo: error: {first_line(error)}\n  full log: {log_path}") from None
        finally:
            progress.stop()
            pneumo_logger.removeHandler(handler)
            sys.stdout.flush()
            sys.stderr.flush()
    terminal.close()


def _has_file_descriptor(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False
    return True


@contextlib.contextmanager
def _redirect_fds(log_path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 (Python's sys.stdout/sys.stderr and every C/C++ writer) at the log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
