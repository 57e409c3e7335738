"""The terminal of `pneumo run`: the progress table as plain lines and as a live table in a real
pseudo-terminal, Ray-style noise (Python prints, C-level writes to fd 2) kept in the run's log, and a
real error shown in one line with the log's path."""

import io
import os
import pty
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pneumo.cli.progress import RunProgress, run_log_path
from pneumo.training.events import COMPLETED, first_line

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n

# A run's events fed to watch_run in a child process, with the noise Ray makes around them
SCRIPT = textwrap.dedent("""\
    import logging, os, sys
    from pathlib import Path
    from pneumo.cli.progress import watch_run
    from pneumo.training.events import COMPLETED, FAILED, STOPPED_EARLY

    with watch_run(Path(sys.argv[1]), "val_auroc", "max", 3) as progress:
        logging.getLogger("pneumo.experiment").setLevel(logging.INFO)
        logging.getLogger("pneumo.experiment").info("data: 300 films")
        print("Trial status: 1 RUNNING")  # Tune's table, Python-level
        os.write(2, b"core_worker.cc:2465: PreemptionWatcher max_restarts > 0\\n")  # Ray's C++ core
        progress.trial_started("t1", {"train.lr": 0.0123456})
        progress.epoch_reported("t1", {"epoch": 0, "val_auroc": 0.81, "train_loss": 0.5,
                                       "epoch_started_at": 100.0, "epoch_finished_at": 130.0})
        progress.epoch_reported("t1", {"epoch": 1, "val_auroc": 0.86})
        progress.epoch_reported("t1", {"epoch": 2, "val_auroc": 0.84})
        progress.trial_ended("t1", COMPLETED)
        progress.trial_started("t2", {"train.lr": 1e-6})
        progress.epoch_reported("t2", {"epoch": 0, "val_auroc": 0.5})
        progress.trial_ended("t2", STOPPED_EARLY, "stopped by ASHA at epoch 1")
        progress.trial_started("t3")
        progress.trial_ended("t3", FAILED, "ConfigError: train.optimizer: 'nadam' is not one of adamw, sgd")
        if len(sys.argv) > 2:
            raise RuntimeError("the controller died\\nsecond line of the message")
    """)


def run_script(tmp_path: Path, *extra: str, terminal: bool = False) -> tuple[int, str, str, str]:
    """(exit status, what the terminal or pipe got, stderr, the log) of SCRIPT run in a child process."""
    script, log = tmp_path / "watched.py", tmp_path / "run.log"
    script.write_text(SCRIPT)
    command = [sys.executable, str(script), str(log), *extra]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    if not terminal:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        return done.returncode, done.stdout, done.stderr, log.read_text()
    leader, follower = pty.openpty()
    child = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return child.wait(timeout=30), b"".join(chunks).decode(errors="replace"), "", log.read_text()


def test_plain_output_has_a_line_per_event_and_no_control_characters(tmp_path):
    status, out, err, log = run_script(tmp_path)

    assert status == 0 and err == ""
    assert not CONTROL.search(out), "plain output (CI, ray job logs) has no escape sequences or redraws"
    lines = out.splitlines()
    assert lines[0].startswith("log:") and str(tmp_path / "run.log") in lines[0]
    assert "data: 300 films" in lines, "pneumo's own log messages are shown"
    assert "t1 started (train.lr=0.0123)" in lines
    assert any(
        line.startswith("t1 epoch 1/3  val_auroc 0.8100  best 0.8100  train_loss 0.5000  ~1 min 00 s left")
        for line in lines
    ), "two epochs of 30 s left"
    assert "t1 epoch 3/3  val_auroc 0.8400  best 0.8600" in lines, "best so far survives a worse epoch"
    assert "t2 stopped early: stopped by ASHA at epoch 1" in lines
    assert any(
        line.startswith("t3 failed: ConfigError") and f"(full log: {tmp_path / 'run.log'})" in line for line in lines
    ), "a failed trial says why and where the whole log is"
    final = out[out.index("best val_auroc 0.8600 (t1)") :]
    assert re.search(r"\| t1 +\| completed +\| +3/3 \| +0\.8400 \| 0\.8600 \| train\.lr=0\.0123", final)
    assert re.search(r"\| t2 +\| stopped by ASHA at epoch 1 +\| +1/3 \|", final)
    for noise in ("Trial status", "PreemptionWatcher"):
        assert noise not in out and noise in log, f"{noise!r} goes to the log, not the terminal"


def test_terminal_gets_a_live_table_and_the_same_final_table(tmp_path):
    status, screen, _, log = run_script(tmp_path, terminal=True)

    assert status == 0
    assert "\x1b[" in screen, "a terminal gets rich's live redraws"
    assert "t2" in screen and "stopped by ASHA at epoch 1" in screen and "best val_auroc 0.8600 (t1)" in screen
    assert "t3 failed: ConfigError" in screen, "failures are printed above the live table"
    assert "PreemptionWatcher" not in screen and "PreemptionWatcher" in log


def test_an_unexpected_error_is_one_line_and_the_log_has_the_traceback(tmp_path):
    status, out, err, log = run_script(tmp_path, "fail")

    assert status == 1
    assert err.strip().splitlines() == [
        "pneumo: error: RuntimeError: the controller died",
        f"  full log: {tmp_path / 'run.log'}",
    ]
    assert "Traceback (most recent call last)" in log and "second line of the message" in log
    assert "t3 failed" in out, "the table is still printed before the error"


def test_progress_rows_and_time_left_without_a_terminal():
    stream = io.StringIO()
    progress = RunProgress(stream, "val_loss", "min", 4, interactive=False)
    progress.trial_started("a")
    progress.epoch_reported("a", {"epoch": 0, "val_loss": 0.6, "epoch_started_at": 0.0, "epoch_finished_at": 65.0})
    progress.epoch_reported("a", {"epoch": 1, "val_loss": 0.7, "epoch_started_at": 65.0, "epoch_finished_at": 95.0})
    row = progress.trials["a"]
    assert (row.epoch, row.latest, row.best) == (2, 0.7, 0.6), "mode min: the lower loss is the best"
    assert "~1 min 00 s left" in stream.getvalue().splitlines()[-1], "two more epochs of 30 s"
    progress.trial_ended("a", COMPLETED)
    assert progress.best_trial() is row
    progress.stop()
    progress.stop()
    assert stream.getvalue().count("best val_loss 0.6000 (a)") == 1, "the final table is printed once"


def test_first_line_and_log_path(tmp_path):
    assert first_line(ValueError("bad value\nmore")) == "ValueError: bad value"
    assert first_line(KeyError()) == "KeyError"
    path = run_log_path(tmp_path, "quickstart")
    assert path.parent == tmp_path / "logs" and path.parent.is_dir()
    assert re.fullmatch(r"quickstart-\d{8}-\d{6}\.log", path.name)
