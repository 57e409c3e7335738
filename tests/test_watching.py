"""Watching a real search from outside, as a user would: `pneumo run` in its own process with its own
Ray head, its stdout read as CI or `ray job logs` would read it, the dashboard's Train API and pages
queried with the head's token while trials run, and the MLflow store read while the search goes on.

Set PNEUMO_SCREENSHOT_DIR to keep the dashboard and MLflow pictures (docs/ uses them)."""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import write_smoke_yaml
from mlflow.tracking import MlflowClient
from mlflow_ui import CHROMIUM, mlflow_server, picture_run_metrics

from pneumo.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # make test-extended: a search of its own, on a Ray of its own
BIN = Path(sys.executable).parent
TRAIN_RUNS_API = "/api/train/v2/runs/v1"  # ray/dashboard/modules/train/train_head.py
# two trials in turn: one that trains, then one whose config fails inside the trial
SEARCH = """\
tune:
  num_samples: 1
  search_space:
    train.optimizer: {grid: [adamw, nadam]}
"""
OVERRIDES = [
    "train.epochs=2",
    "mlflow.system_metrics_interval_s=1",
    "mlflow.register=false",
    "eval.report=false",
    "export.onnx=false",
]


def dashboard_get(address: str, token: str, path: str):
    request = urllib.request.Request(address + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def screenshot_train_workers(address: str, token: str, path: Path) -> str:
    """The dashboard's Actors page (Ray 2.60's open-source UI has no Train page: its Train view is the API)
    in headless Chromium, filtered to the training workers; returns the page text."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_context(
            viewport={"width": 1400, "height": 900}, extra_http_headers={"Authorization": f"Bearer {token}"}
        ).new_page()
        page.goto(f"{address}/#/actors", wait_until="networkidle", timeout=60_000)
        page.get_by_text("RayTrainWorker").first.wait_for(timeout=60_000)
        page.screenshot(path=str(path), full_page=True)
        text = page.inner_text("body")
        browser.close()
    return text


class WatchedRun:
    """`pneumo run` in a child process with stdout and stderr read as they come."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            threading.Thread(target=lambda s=stream, out=lines: out.extend(iter(s.readline, "")), daemon=True).start()

    def line_starting(self, prefix: str):
        return next((line for line in list(self.stdout) if line.startswith(prefix)), None)


@pytest.fixture(scope="module")
def watched(synthetic_root, tmp_path_factory):
    """Run the search, and while it runs record what the dashboard and MLflow showed."""
    directory = tmp_path_factory.mktemp("watched")
    path = write_smoke_yaml(directory, synthetic_root, "watched", SEARCH)
    cfg = load_config([path], OVERRIDES)
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="watch", dir="/tmp")}  # its own head, loopback
    for inherited in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_TRAIN_ENABLE_STATE_TRACKING"):
        env.pop(inherited, None)
    run = WatchedRun([str(BIN / "pneumo"), "run", str(path), *OVERRIDES], env)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    seen = {"train_runs": {}, "live_parent": None, "page_text": ""}
    token = None
    shot_dir = Path(os.environ.get("PNEUMO_SCREENSHOT_DIR", directory))
    deadline = time.monotonic() + 1200
    try:
        while run.process.poll() is None:
            assert time.monotonic() < deadline, "the search did not finish in 20 minutes"
            time.sleep(2)
            dashboard = run.line_starting("dashboard:")
            if dashboard:
                address = dashboard.split()[1]
                token = (
                    token
                    or subprocess.run(
                        [BIN / "ray", "get-auth-token"], capture_output=True, text=True, env=env
                    ).stdout.strip()
                )  # what the printed line tells users to run
                try:
                    for train_run in dashboard_get(address, token, TRAIN_RUNS_API)["train_runs"]:
                        seen["train_runs"][train_run["name"]] = train_run
                except OSError:
                    pass  # the state actor appears with the first training run
                if seen["train_runs"] and not seen["page_text"]:
                    seen["page_text"] = screenshot_train_workers(
                        address, token, shot_dir / "dashboard-train-workers.png"
                    )
            experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
            parents = (
                client.search_runs([experiment.experiment_id], "tags.`pneumo.kind` = 'search'") if experiment else []
            )
            if parents and seen["live_parent"] is None:
                children = client.search_runs(
                    [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
                )
                if any(child.info.status == "FINISHED" for child in children):
                    seen["live_parent"] = client.get_run(parents[0].info.run_id)  # a trial ended, the search goes on
    finally:
        if run.process.poll() is None:
            run.process.kill()
        run.process.wait(timeout=60)
    time.sleep(0.5)  # the reader threads take the last lines
    return run, cfg, client, seen


def test_terminal_shows_the_table_and_the_log_keeps_ray(watched):
    run, cfg, _, _ = watched
    out = "".join(run.stdout)
    assert run.process.returncode == 0, out[-3000:] + "".join(run.stderr)[-3000:]
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out), "plain lines when stdout is not a terminal"
    log = Path(run.line_starting("log:").split()[1])
    assert run.line_starting("dashboard:").split()[1].startswith("http://127.0.0.1:")
    assert "ray get-auth-token" in run.line_starting("dashboard:")
    assert re.search(r"^\w+_00000 epoch 2/2  val_auroc \d\.\d{4}  best \d\.\d{4}", out, re.M)
    assert re.search(r"^\w+_00001 failed: .*ConfigError.*train\.optimizer.*\(full log: .*\.log\)$", out, re.M)
    assert re.search(r"^\| \w+_00000 +\| completed +\| +2/2 \|", out, re.M), "the final table"
    assert "test metrics" in out and "mlflow run:" in out
    log_text = log.read_text()
    for noise in ("Trial status", "(TrainController pid=", "Configuration for experiment"):
        assert noise not in out and noise in log_text, f"{noise!r} belongs in the log"
    for noise in ("PreemptionWatcher", "RayDeprecationWarning", "Progress bars disabled", "core_worker"):
        assert noise not in out, f"{noise!r} is not shown by default"
    assert "".join(run.stderr).strip() == "", "nothing reaches stderr while the run goes well"


def test_mlflow_follows_the_search_live_and_closes_each_trial_when_it_ends(watched):
    run, cfg, client, seen = watched
    parent_run = seen["live_parent"]
    assert parent_run is not None and parent_run.info.status == "RUNNING", "a trial ended before the search did"
    assert parent_run.data.metrics["trials_started"] >= 1 and "best_val_auroc" in parent_run.data.metrics

    parent = client.get_run(parent_run.info.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["pneumo.search_progress"] == "2 started, 1 completed, 1 failed"
    started = [m.value for m in client.get_metric_history(parent.info.run_id, "trials_started")]
    assert sorted(started) == started and started[-1] == 2
    best = client.get_metric_history(parent.info.run_id, "best_val_auroc")
    values = [m.value for m in sorted(best, key=lambda m: m.step)]
    assert len(values) >= cfg.train.epochs and values == sorted(values), "best so far: a step per result, never worse"

    children = sorted(
        client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"),
        key=lambda child: child.data.tags["pneumo.trial_id"],
    )
    trained, failed = children
    assert trained.data.tags["pneumo.trial_state"] == "completed"
    assert failed.info.status == "FAILED" and failed.data.tags["pneumo.trial_state"].startswith("failed: ")
    assert "train.optimizer" in failed.data.tags["pneumo.trial_state"]
    assert trained.info.status == "FINISHED" and trained.info.end_time <= failed.info.start_time, (
        "the first trial's run ended when the trial did, not with the search"
    )
    metrics = trained.data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0 and metrics["system/system_memory_usage_megabytes"] > 0
    assert len(client.get_metric_history(trained.info.run_id, "system/cpu_utilization_percentage")) >= 2


def test_dashboard_train_api_lists_each_trials_training_run(watched):
    run, cfg, client, seen = watched
    trial_ids = {
        c.data.tags["pneumo.trial_id"]
        for c in client.search_runs(
            [client.get_experiment_by_name(cfg.mlflow.experiment_name).experiment_id], "tags.`pneumo.kind` = 'trial'"
        )
    }
    trained = {name: train_run for name, train_run in seen["train_runs"].items() if name in trial_ids}
    assert len(trained) >= 1, f"Train runs seen: {list(seen['train_runs'])}"
    for train_run in trained.values():
        workers = train_run["attempts"][-1]["workers"]
        assert len(workers) == cfg.scaling.num_workers and all(w["node_ip"] == "127.0.0.1" for w in workers)
        assert all(w["log_file_path"] for w in workers), "each worker's log is one click away"
    assert "RayTrainWorker" in seen["page_text"] and "TrainController" in seen["page_text"]


def test_the_mlflow_ui_draws_the_searchs_progress(watched, tmp_path):
    """The search run's "Model metrics" tab in the MLflow UI, as a user opens it: best so far and the
    trial counts drawn as charts (the picture in README's "Watching a run")."""
    if not Path(CHROMIUM).exists():
        pytest.skip("the MLflow UI picture needs Chromium: apt-get install -y chromium (.ci/run installs it)")
    _, cfg, client, _ = watched
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    parent = client.search_runs([experiment.experiment_id], "tags.`pneumo.kind` = 'search'")[0]
    picture = Path(os.environ.get("PNEUMO_SCREENSHOT_DIR", tmp_path)) / "watch-mlflow.png"
    with mlflow_server(cfg.mlflow.tracking_uri) as address:
        text = picture_run_metrics(address, experiment.experiment_id, parent.info.run_id, "best_|trials_", picture)
    assert parent.info.run_name in text
    for chart in ("best_val_auroc", "trials_started", "trials_completed", "trials_failed"):
        assert chart in text, f"no {chart} chart on the search run's page"
    assert picture.stat().st_size > 10_000
