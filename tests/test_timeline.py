"""pneumo/cli/timeline.py: phase marks written to the run's log and read back."""

import io
import sys

from pneumo.cli.timeline import mark, read_marks


def test_marks_read_back_in_order_with_their_times(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)  # where watch_run's redirect sends them: the run's log
    mark("ray_started", 1796011375.25)
    mark("data_prepared")
    mark("ray_started", 1796011380.5)  # marked again: the last one counts
    marks = read_marks("Ray's own line\n" + log.getvalue())
    assert list(marks) == ["ray_started", "data_prepared"]
    assert marks["ray_started"] == 1796011380.5
    assert marks["data_prepared"] > 1796011000


def test_marks_stay_off_the_display_handler():
    """The terminal shows the progress table and pneumo's messages; the marks go to the log only."""
    import logging

    assert logging.getLogger("pneumo.cli.timeline").propagate is False
