"""`pneumo serve` until SIGTERM or Ctrl-C, then a graceful stop: the app is deleted (Serve stops
routing to its replicas, so new requests are refused), each replica finishes its in-flight requests
for up to serve.drain_timeout_s (Serve's graceful_shutdown_timeout_s, see builder.deployment_options);
the caller then shuts Serve and its local Ray down, and the process exits 0.

Without this, SIGTERM reached Ray's core worker handler, which printed `*** SIGTERM received ***`
with a native stack and cut the requests in flight.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from ray import serve
from ray.serve import Application

logger = logging.getLogger(__name__)


def serve_until_signalled(app: Application, name: str, drain_timeout_s: float) -> int:
    """Run `app` until SIGTERM or SIGINT, then drain and stop; returns the signal number that ended it."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
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
