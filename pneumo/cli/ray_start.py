"""Ray start-up for every `pneumo` command: the environment defaults, a local Ray on loopback with its
dashboard on a port chosen first, or joining $RAY_ADDRESS; and free loopback ports for the servers
tests and benchmarks start. Its side effects (environment variables, ray.init) are the CLI's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import sys
from typing import Optional

from pneumo.cli.timeline import mark

QUIET_DEFAULTS = {  # set only when the user has not: no telemetry, no hub calls that cannot succeed offline
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_DATA_LOG_LEVEL": "WARNING",  # Ray Data logs every dataset execution at INFO
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def _free_on_loopback(port: int) -> bool:
    """Whether `port` can be bound on 127.0.0.1 now."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_local_port() -> int:
    """A free loopback port picked by the kernel: for the servers tests and benchmarks start. A local
    Ray's dashboard gets free_dashboard_port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


DASHBOARD_PORT = 8265  # Ray's default: the local dashboard's port when it is free
# Fallback dashboard ports: above Ray's worker ports (10002-19999) and below Linux's ephemeral range
# (32768+), so no bind to port 0 and no outgoing connection is handed one between the probe and Ray's
# bind; drawn at random, so two runs starting together rarely probe the same one.
FALLBACK_DASHBOARD_PORTS = range(20000, 32768)
DASHBOARD_ATTEMPTS = 3  # ray.init tries when the probed port was taken before the dashboard bound it


def free_dashboard_port() -> int:
    """DASHBOARD_PORT when free on 127.0.0.1, else a free one of FALLBACK_DASHBOARD_PORTS."""
    candidates = [DASHBOARD_PORT, *random.sample(FALLBACK_DASHBOARD_PORTS, 50)]
    return next((port for port in candidates if _free_on_loopback(port)), None) or free_local_port()


STATE_TRACKING = "RAY_TRAIN_ENABLE_STATE_TRACKING"  # Ray Train's state actor: the dashboard's Train page


def _state_tracking_runtime_env() -> Optional[dict]:
    """Ray Train state tracking for every process of this driver's job on a cluster (the Tune trials
    build their TorchTrainers there), unless the job's own runtime_env already sets it (Ray refuses
    to merge the same variable twice)."""
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    if STATE_TRACKING in ((job_config.get("runtime_env") or {}).get("env_vars") or {}):
        return None
    return {"env_vars": {STATE_TRACKING: os.environ.get(STATE_TRACKING, "1")}}


def _start_local_ray(settings: dict):
    """ray.init of a Ray started here, its dashboard on a port chosen before Ray starts.

    RAY_API_SERVER_ADDRESS, inherited by every Ray process started here, lets Ray Train's
    placement-group cleaner find *this* Ray even when other Ray instances run on the machine
    (otherwise it fails, and Tune trials stopped by ASHA leak their CPUs until the search hangs), so
    the port cannot be left to Ray's own search. When another process binds the probed port before
    the dashboard does, Ray starts without a dashboard: it is started again on another port.
    """
    import ray

    for attempt in range(1, DASHBOARD_ATTEMPTS + 1):
        port = free_dashboard_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        context = ray.init(dashboard_host="127.0.0.1", dashboard_port=port, **settings)
        if (context.dashboard_url or "").endswith(f":{port}") or attempt == DASHBOARD_ATTEMPTS:
            return context
        logging.getLogger(__name__).warning("dashboard port %d was taken as Ray started: starting Ray again", port)
        ray.shutdown()


def init_ray() -> Optional[str]:
    """Join $RAY_ADDRESS (a cluster or `ray job submit`), else start a local Ray in-process; returns the
    dashboard address of a Ray started here. Either way Ray Train's state tracking is on."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return None
    joining = bool(os.environ.get("RAY_ADDRESS"))
    runtime_env = _state_tracking_runtime_env() if joining else None
    os.environ.setdefault(STATE_TRACKING, "1")  # a local Ray's processes inherit it
    if not joining:  # a local Ray on 127.0.0.1 only (read at import)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    settings = {"log_to_driver": True, "logging_level": logging.WARNING, "runtime_env": runtime_env}
    context = ray.init(address=os.environ["RAY_ADDRESS"], **settings) if joining else _start_local_ray(settings)
    data_context = ray.data.DataContext.get_current()
    data_context.execution_options.preserve_order = True  # same seed, same batches
    data_context.enable_progress_bars = sys.stderr.isatty()
    return None if joining or not context.dashboard_url else f"http://{context.dashboard_url}"


@contextlib.contextmanager
def ray_shut_down_at_exit():
    """Shut down a Ray that the block starts, before the block's caller restores the terminal.

    Ray's log deduplicator holds back worker lines that repeat across processes ("[repeated 2x across
    cluster]") and prints them to sys.stderr when Ray shuts down; left to Ray's atexit hook, that is
    after `watch_run` gave fd 2 back to the terminal, so a harmless actor line reached the user."""
    was_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        yield
    finally:
        if not was_running and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
            mark("ray_stopped")
