"""A real `mlflow server` for tests: started on a store and stopped with its workers (tests/test_faults.py
takes it away mid-run), and its UI as a user opens it, pages read and pictured in headless Chromium
(Debian's, through Playwright; tests/test_watching.py, whose pictures docs/ keeps)."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from pneumo.cli.ray_start import free_local_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERVER_READY_S = 120  # `mlflow server` is ready in ~9 s on a quiet machine, far later on a busy one


def start_mlflow_server(backend: str, port: int, artifacts: Optional[Path] = None) -> subprocess.Popen:
    """`mlflow server` (one worker, its own process group) on 127.0.0.1:`port` over the store `backend`,
    returned once /health answers."""
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", backend, "--workers", "1"]
    if artifacts is not None:
        command += ["--artifacts-destination", str(artifacts)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + SERVER_READY_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return server
        except OSError:
            assert server.poll() is None, f"mlflow server exited with {server.returncode}"
            assert time.monotonic() < deadline, f"mlflow server not ready in {SERVER_READY_S} s"
            time.sleep(1)


def stop(server: subprocess.Popen) -> None:
    """Kill the server and every process it started."""
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


@contextlib.contextmanager
def mlflow_server(store_uri: str) -> Iterator[str]:
    """`mlflow server` over `store_uri` on a free loopback port; yields its address."""
    port = free_local_port()
    server = start_mlflow_server(store_uri, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def picture_run_metrics(address: str, experiment_id: str, run_id: str, charts: str, path: Path) -> str:
    """The run's "Model metrics" tab in the UI's model-training view, its charts filtered by the regular
    expression `charts` (the search box's), pictured at `path`; returns the page text."""
    from playwright.sync_api import sync_playwright

    run_page = f"{address}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
        page.goto(run_page, timeout=60_000)
        page.get_by_text("Model training", exact=True).first.click()  # the UI opens in its GenAI view by default
        page.goto(run_page, timeout=60_000)
        page.get_by_text("Add section").first.wait_for(timeout=60_000)  # the charts section has loaded
        page.wait_for_timeout(1_000)
        assistant = page.get_by_role("button", name="Close")  # the MLflow Assistant panel: not ours to show
        if assistant.count():
            assistant.first.click()
        page.get_by_placeholder("Search metric charts").fill(charts)
        page.wait_for_timeout(1_500)  # the charts draw after their titles
        page.screenshot(path=str(path))
        text = page.inner_text("body")
        browser.close()
    return text
