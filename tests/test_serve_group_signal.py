"""SIGTERM to `pneumo serve`'s whole process group (`kill -- -PGID`, a supervisor or container runtime
signalling the group) drains the requests in flight and exits 0, as SIGTERM to the process alone does
(tests/test_serve_shutdown.py): the server and its local Ray run in a session of their own, so the group
signal reaches only the process that was started, which forwards it.
"""

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from conftest import png_bytes
from PIL import Image
from test_serve_shutdown import BIN, IN_FLIGHT_S, own_env, wait_ready

from bench.serve_bench import untrained_checkpoint
from pneumo.cli.ray_start import free_local_port


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes whose command line names `text` (a Ray's temp dir: its GCS, raylet, workers)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE and text in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.mark.slow
@pytest.mark.extended  # make test-extended: a server of its own on a Ray of its own
def test_sigterm_to_the_process_group_drains_and_exits_0(tmp_path):
    checkpoint = untrained_checkpoint(tmp_path / "checkpoint", "test_resnet", 32)
    film = png_bytes(Image.linear_gradient("L"))
    yaml = tmp_path / "serve.yaml"
    yaml.write_text(
        f"name: group-stop\ndata: {{path: {tmp_path}}}\n"
        f"serve: {{batch_wait_timeout_s: {IN_FLIGHT_S}, runtime: torch, drain_timeout_s: 30}}\n"
    )
    env, port = own_env(tmp_path), free_local_port()
    server = subprocess.Popen(
        [BIN / "pneumo", "serve", str(checkpoint), "--config", str(yaml), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as under a supervisor: the group is signalled below
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server)
        ray_processes = processes_mentioning(env["RAY_TMPDIR"])
        assert ray_processes, "the local Ray's processes name its temp dir"
        assert all(os.getpgid(p.pid) != server.pid for p in ray_processes), "Ray is out of the signalled group"
        with ThreadPoolExecutor(3) as pool:
            in_flight = [
                pool.submit(
                    requests.post, f"{url}/predict", data=film, headers={"Content-Type": "image/png"}, timeout=60
                )
                for _ in range(3)
            ]
            time.sleep(1.0)  # the requests now wait in the replica's batcher
            os.killpg(server.pid, signal.SIGTERM)
            answers = [future.result() for future in in_flight]
        output, _ = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    assert [answer.status_code for answer in answers] == [200, 200, 200], [answer.text for answer in answers]
    assert server.returncode == 0, output
    assert "SIGTERM: no new requests; draining in-flight" in output and "SIGTERM received" not in output, output
    deadline = time.monotonic() + 30  # Ray's last processes exit after the server's shutdown returns
    while processes_mentioning(env["RAY_TMPDIR"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not processes_mentioning(env["RAY_TMPDIR"]), "nothing of the server's Ray outlives it"
