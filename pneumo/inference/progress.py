"""The one line `pneumo predict` keeps updated while it scores:

    1,250 of 20,000 films  84.1 films/s  ETA 3 min 43 s  refused 3  unreadable 7

On a terminal the line is redrawn in place (at most REDRAW_PER_S times a second); elsewhere (CI, a
pipe, `ray job logs`) it is printed as a new line every PLAIN_EVERY_S seconds and once at the end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Optional

REDRAW_PER_S = 4
PLAIN_EVERY_S = 10.0


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@dataclass
class PredictProgress:
    stream: IO[str] = field(default_factory=lambda: sys.stdout)
    interactive: bool = False  # redraw in place (a terminal) or print lines
    total: int = 0  # films this run scores
    done: int = 0
    refused: int = 0
    unreadable: int = 0  # unreadable, missing and failed together
    started: float = field(default_factory=time.monotonic)
    _last_drawn: float = 0.0

    def start(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()

    def films_per_s(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.films_per_s()
        eta = f"ETA {duration((self.total - self.done) / rate)}" if rate > 0 and self.done < self.total else ""
        parts = [
            f"{self.done:,} of {self.total:,} films",
            f"{rate:.1f} films/s",
            eta,
            f"refused {self.refused:,}",
            f"unreadable {self.unreadable:,}",
        ]
        return "  ".join(part for part in parts if part)

    def advance(self, statuses: list[Optional[str]]) -> None:
        """Count one batch of rows by status; redraw when due."""
        self.done += len(statuses)
        self.refused += sum(s == "refused_ood" for s in statuses)
        self.unreadable += sum(s in ("unreadable", "missing", "failed") for s in statuses)
        now = time.monotonic()
        if now - self._last_drawn >= (1 / REDRAW_PER_S if self.interactive else PLAIN_EVERY_S):
            self._draw()
            self._last_drawn = now

    def note(self, message: str) -> None:
        """A line of its own (the updating line is drawn again below it)."""
        self.stream.write(("\r\x1b[K" if self.interactive else "") + message + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self._draw()
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        self.stream.write(f"\r\x1b[K{self.line()}" if self.interactive else f"{self.line()}\n")
        self.stream.flush()
