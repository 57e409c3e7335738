"""`pneumo serve` in a real subprocess (its own local Ray) stops gracefully on SIGTERM and Ctrl-C:
requests in flight are answered, then it exits 0 without Ray's native `*** SIGTERM received ***` dump.
Behind Ray's HAProxy ingress (serve.ingress=haproxy) too, and then no HAProxy process outlives it.

Requests are held in flight by a long serve.batch_wait_timeout_s (each waits that long for company).
"""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from conftest import png_bytes
from PIL import Image

from bench.serve_bench import untrained_checkpoint
from pneumo.cli.ray_start import free_local_port

BIN = Path(sys.executable).parent
IN_FLIGHT_S = 4.0  # serve.batch_wait_timeout_s: how long each request stays in the replica


def own_env(tmp_path: Path) -> dict[str, str]:
    """A Ray of its own: no session Ray address to join, its own temp dir (short path for sockets)."""
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["RAY_TMPDIR"] = str(Path("/tmp") / f"stop{os.getpid()}{tmp_path.name[-6:]}")
    return env


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[0]
        try:
            if requests.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or no route to the app yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url}/readyz not 200 within {timeout_s} s")


def haproxies_since(started: float) -> list[psutil.Process]:
    """HAProxy processes started since `started` (Serve reloads HAProxy by starting a new one), wherever
    they were re-parented."""
    return [
        p
        for p in psutil.process_iter(["name", "create_time"])
        if p.info["name"] == "haproxy" and p.info["create_time"] >= started
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, ingress",
    [
        # make test-extended: each starts a server of its own on a Ray of its own
        pytest.param(signal.SIGTERM, "proxy", marks=pytest.mark.extended),
        pytest.param(signal.SIGINT, "proxy", marks=pytest.mark.extended),
        pytest.param(signal.SIGTERM, "haproxy", marks=pytest.mark.extended),
    ],
    ids=["SIGTERM", "SIGINT", "SIGTERM-haproxy"],
)
def test_serve_drains_requests_in_flight_and_exits_0(tmp_path, signum, ingress):
    checkpoint = untrained_checkpoint(tmp_path / "checkpoint", "test_resnet", 32)
    film = png_bytes(Image.linear_gradient("L"))
    yaml = tmp_path / "serve.yaml"
    yaml.write_text(
        f"name: stop-test\ndata: {{path: {tmp_path}}}\n"
        f"serve: {{batch_wait_timeout_s: {IN_FLIGHT_S}, runtime: torch, drain_timeout_s: 30, ingress: {ingress}}}\n"
    )
    port, started = free_local_port(), time.time()
    server = subprocess.Popen(
        [BIN / "pneumo", "serve", str(checkpoint), "--config", str(yaml), "--port", str(port)],
        env=own_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, SIGINT not ignored as in `cmd &`
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        assert bool(haproxies_since(started)) == (ingress == "haproxy"), "HAProxy is in front exactly when asked"
        with ThreadPoolExecutor(3) as pool:
            in_flight = [
                pool.submit(
                    requests.post, f"{url}/predict", data=film, headers={"Content-Type": "image/png"}, timeout=60
                )
                for _ in range(3)
            ]
            time.sleep(1.0)  # the requests now wait in the replica's batcher
            server.send_signal(signum)
            answers = [future.result() for future in in_flight]
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert [answer.status_code for answer in answers] == [200, 200, 200], [answer.text for answer in answers]
    assert server.returncode == 0, output
    assert "draining in-flight" in output and "SIGTERM received" not in output, output
    with pytest.raises(requests.ConnectionError):  # nothing listens any more
        requests.get(f"{url}/healthz", timeout=5)
    assert not haproxies_since(started), "no HAProxy outlives the server"
