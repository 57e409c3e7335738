"""`pneumo serve` until SIGTERM or Ctrl-C, then a graceful stop: the app is deleted (Serve stops
routing to its replicas, so new requests are refused), each replica finishes its in-flight requests
for up to serve.drain_timeout_s (Serve's graceful_shutdown_timeout_s, see builder.deployment_options);
the caller then shuts Serve and its local Ray down, and the process exits 0.

Without this, SIGTERM reached Ray's core worker handler, which printed `*** SIGTERM received ***`
with a native stack and cut the requests in flight.

A signal sent to the whole process group (`kill -- -PGID`, a supervisor or a container runtime that
signals the group) would reach the local Ray's GCS, raylet and replicas too, which then die before
they drain: serve_in_own_session runs the server in a session of its own, so Ray's processes are out of
the caller's process group, and the process the caller started forwards each stopping signal to it.
(systemd's default KillMode=control-group signals every process of the unit whatever its group: give
a unit that runs `pneumo serve` KillMode=mixed.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.serve import Application

logger = logging.getLogger(__name__)

OWN_SESSION_ENV = "PNEUMO_SERVE_OWN_SESSION"  # set in the server process that serve_in_own_session starts
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies (Linux)


def _stop_with_parent() -> None:
    """In the server process before it runs: SIGTERM (a graceful stop) when its launcher dies, even by
    SIGKILL, so a server never outlives the process its caller watches."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_in_own_session() -> None:
    """Run this `pneumo serve` command again in a session of its own and exit with its status; returns at
    once in that server process, or where `pneumo serve` is not the process's own command (main() called
    from Python) or not on POSIX."""
    if os.environ.get(OWN_SESSION_ENV) or sys.argv[1:2] != ["serve"] or os.name != "posix":
        return
    server = subprocess.Popen(
        [sys.executable, "-c", "from pneumo.cli import main; main()", *sys.argv[1:]],
        env={**os.environ, OWN_SESSION_ENV: "1"},
        start_new_session=True,  # its own session and process group: a group signal here misses it
        preexec_fn=_stop_with_parent,
    )

    def forward(signum: int, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signum)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    status = server.wait()
    raise SystemExit(status if status >= 0 else 128 - status)  # killed by signal N: 128 + N, as a shell says


def serve_until_signalled(app: Application, name: str, drain_timeout_s: float) -> int:
    """Run `app` until SIGTERM, SIGINT or SIGHUP, then drain and stop; returns the signal number that
    ended it."""
    from ray import serve

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in FORWARDED_SIGNALS}
    try:
        serve.run(app, name=name, route_prefix="/")
        while not stop.wait(0.5):
            pass
        signum = received[0]
        print(
            f"{signal.Signals(signum).name}: no new requests; draining in-flight ones (up to {drain_timeout_s:g} s)",
            flush=True,
        )
        started = time.monotonic()
        serve.delete(name, _blocking=True)  # returns once every replica has drained or timed out
        print(f"drained in {time.monotonic() - started:.1f} s", flush=True)
        return signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
