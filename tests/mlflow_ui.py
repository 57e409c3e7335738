"""The MLflow UI as a user opens it: `mlflow server` on a run store, pages read and pictured in headless
Chromium (Debian's, through Playwright). Used by tests/test_watching.py; docs/ keeps its pictures."""

import contextlib
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pneumo.cli import free_local_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SERVER_READY_S = 120  # `mlflow server` is ready in ~9 s on a quiet machine, far later on a busy one


@contextlib.contextmanager
def mlflow_server(store_uri: str) -> Iterator[str]:
    """`mlflow server` over `store_uri` on a free loopback port; yields its address."""
    port = free_local_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "server", "--backend-store-uri", store_uri, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_READY_S
        while True:
            try:
                with urllib.request.urlopen(f"{address}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None, f"mlflow server exited with {server.returncode}"
                assert time.monotonic() < deadline, f"mlflow server not ready in {SERVER_READY_S} s"
                time.sleep(1)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)


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
