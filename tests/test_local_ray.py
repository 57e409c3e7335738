"""The local Ray `pneumo` starts: its dashboard port is chosen before Ray starts (Ray Train's
placement-group cleaner finds this Ray through it), and a port taken in the meantime costs a restart,
not a Ray without a dashboard."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pneumo.cli.ray_start import DASHBOARD_PORT, FALLBACK_DASHBOARD_PORTS, free_dashboard_port


def test_a_taken_default_dashboard_port_falls_back_outside_the_kernels_ephemeral_range():
    with socket.socket() as holder:
        with contextlib.suppress(OSError):  # something on this machine has it already: the case under test too
            holder.bind(("127.0.0.1", DASHBOARD_PORT))
        port = free_dashboard_port()
    assert port != DASHBOARD_PORT and port in FALLBACK_DASHBOARD_PORTS
    low, _ = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert port < low, "the kernel never hands out a fallback port to a bind(0) or a connection"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # and it was free


RACE = textwrap.dedent(
    """
    import json, os, pathlib, socket, sys, urllib.error, urllib.request
    import pneumo.cli.ray_start as cli

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()  # the probed port, bound by another process before Ray's dashboard could
    ports = iter([taken.getsockname()[1]])
    real = cli.free_dashboard_port
    cli.free_dashboard_port = lambda: next(ports, None) or real()
    url = cli.init_ray()
    try:  # the dashboard answers there (401: token authentication is on)
        urllib.request.urlopen(url + "/api/version", timeout=30)
        status = 200
    except urllib.error.HTTPError as error:
        status = error.code
    found = {"taken": taken.getsockname()[1], "url": url, "api": os.environ["RAY_API_SERVER_ADDRESS"], "status": status}
    pathlib.Path(sys.argv[1]).write_text(json.dumps(found))  # not stdout: Ray's log lines can follow a print
    import ray; ray.shutdown()
    """
)


@pytest.mark.slow
@pytest.mark.extended  # make test-extended: two Ray starts racing for a port
def test_a_dashboard_port_taken_as_ray_starts_restarts_ray_on_another(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    script = tmp_path / "race.py"
    script.write_text(RACE)
    result = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(script), str(result)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    started = json.loads(result.read_text())
    assert f"dashboard port {started['taken']} was taken as Ray started" in done.stderr
    assert started["url"] and not started["url"].endswith(f":{started['taken']}")
    assert started["api"] == started["url"], "Ray's processes were told the dashboard the Ray really has"
    assert started["status"] in (200, 401), "and it answers there"
