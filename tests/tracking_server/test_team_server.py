"""pneumo end to end against a team's MLflow server: PostgreSQL behind it, artifacts proxied into its
folder, logins on. One `pneumo run` (a 2-trial search, both trials at once, logged in as the admin
through MLflow's environment variables) serves every check; `pneumo eval`, `pneumo monitor` and
`pneumo serve` then read its champion through the server. The same checks the sqlite tests make
(tests/test_run_faults.py, tests/test_tune_run.py): nothing lost, nothing logged twice."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import write_smoke_yaml
from mlflow.tracking import MlflowClient

from pneumo.config import load_config
from pneumo.tracking import TAG_MODEL_URI, dataset_digest

from .servers import free_port

pytestmark = pytest.mark.slow
SEARCH = """\
tune:
  num_samples: 1
  scheduler: fifo
  max_concurrent_trials: 2
  search_space:
    train.lr: {grid: [1.0e-2, 3.0e-3]}
"""
QUICK = [
    "train.epochs=2",
    "scaling.num_workers=1",
    "eval.bootstrap_samples=0",
    "eval.report=false",
    "export.onnx=false",
]
EPOCH_KEYS = ("train_loss", "val_loss", "val_auroc", "lr")


def client_env(login: dict[str, str]) -> dict[str, str]:
    """The environment of a `pneumo` command: its own local Ray (whose workers inherit the login), logged in."""
    return {**{key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}, **login}


def pneumo(args: list[str], env: dict[str, str], timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumo.cli", *args], env=env, capture_output=True, text=True, timeout=timeout_s
    )


@dataclass
class TeamRun:
    yaml: Path
    overrides: list[str]
    cfg: Any
    output: str  # the command's stdout and stderr (--verbose: everything it printed)
    parent: Any  # the search's MLflow run
    children: list  # its trial runs


@pytest.fixture(scope="module")
def team_run(server, as_admin, synthetic_root, tmp_path_factory) -> TeamRun:
    yaml = write_smoke_yaml(tmp_path_factory.mktemp("team_run"), synthetic_root, "team", SEARCH)
    overrides = [*QUICK, "mlflow.system_metrics_interval_s=1", f"mlflow.tracking_uri={server.url}"]
    ran = pneumo(["run", str(yaml), *overrides, "--verbose"], client_env(server.login()))
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, output[-3000:]
    cfg = load_config([yaml], overrides)
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`pneumo.kind` = 'search'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return TeamRun(yaml, overrides, cfg, output, parent, children)


def test_the_search_logs_nested_trials_their_epochs_once_and_system_metrics(server, team_run):
    client = MlflowClient(server.url)
    parent, children = team_run.parent, team_run.children
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials"] == 2
    assert parent.data.tags["pneumo.search_progress"] == "2 started, 2 completed"
    assert [(c.info.status, c.data.tags["pneumo.trial_state"]) for c in children] == [("FINISHED", "completed")] * 2
    assert len({c.data.tags["pneumo.trial_id"] for c in children}) == 2, "no duplicate trial runs"
    first, second = sorted(children, key=lambda c: c.info.start_time)
    assert second.info.start_time < first.info.end_time, "the two trials ran at the same time"
    for child in children:
        for key in EPOCH_KEYS:
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [0, 1], key
        assert len(client.get_metric_history(child.info.run_id, "system/cpu_utilization_percentage")) >= 2
    experiment = client.get_experiment(parent.info.experiment_id)
    assert len(client.search_runs([experiment.experiment_id])) == 3, "one search run and its two trials"
    assert "test_auroc" in parent.data.metrics and "best_val_auroc" in parent.data.metrics


def test_artifacts_go_through_the_server_into_its_folder(server, team_run):
    parent = team_run.parent
    assert parent.info.artifact_uri == f"mlflow-artifacts:/{parent.info.experiment_id}/{parent.info.run_id}/artifacts"
    stored = server.artifacts / parent.info.experiment_id / parent.info.run_id / "artifacts"
    assert (stored / "config.yaml").read_text().startswith("name: team")
    assert list(stored.glob("model/**/MLmodel")), "the registered model's files are in the server's folder"


def test_the_champion_is_registered_with_its_card_and_the_runs_dataset(server, team_run, synthetic_root):
    client = MlflowClient(server.url)
    name = team_run.cfg.mlflow.registered_model_name
    version = client.get_model_version_by_alias(name, "champion")
    assert version.run_id == team_run.parent.info.run_id
    fingerprint = team_run.parent.data.tags["data_fingerprint"]
    assert version.tags["data_fingerprint"] == fingerprint
    assert f"fingerprint `{fingerprint}`" in version.description
    assert f"MLflow dataset digest `{dataset_digest(fingerprint)}`" in version.description

    (logged,) = client.get_run(team_run.parent.info.run_id).inputs.dataset_inputs
    assert logged.dataset.name == synthetic_root.name and logged.dataset.digest == fingerprint[:12]
    assert json.loads(logged.dataset.source) == {"uri": synthetic_root.resolve().as_uri()}
    assert [(tag.key, tag.value) for tag in logged.tags] == [("mlflow.data.context", "training")]
    profile, metrics = json.loads(logged.dataset.profile), team_run.parent.data.metrics
    assert profile["fingerprint"] == fingerprint
    assert profile["counts"]["test"] == {
        "NORMAL": metrics["data.test.NORMAL"],
        "PNEUMONIA": metrics["data.test.PNEUMONIA"],
    }


def test_no_secret_reaches_the_output_the_params_or_the_logged_config(server, team_run):
    client = MlflowClient(server.url)
    secrets = (server.admin_password, server.postgres.password)
    runs = [team_run.parent, *team_run.children]
    logged = [team_run.output, *(json.dumps(run.data.params) for run in runs)]
    logged.append(client.download_artifacts(team_run.parent.info.run_id, "config.yaml"))
    for text in logged:
        for secret in secrets:
            assert secret not in (Path(text).read_text() if text.endswith(".yaml") else text)


@pytest.fixture(scope="module")
def scored(server, team_run, synthetic_root) -> dict[str, subprocess.CompletedProcess]:
    """`pneumo eval` and `pneumo monitor` of the champion, at once, each through the server."""
    model = f"models:/{team_run.cfg.mlflow.registered_model_name}@champion"
    config = ["--config", str(team_run.yaml), *team_run.overrides]
    commands = {
        "eval": ["eval", model, str(synthetic_root), "--verbose", *config],
        "monitor": ["monitor", model, str(synthetic_root), "--split", "test", "--verbose", *config],
    }
    env = client_env(server.login())
    started = {
        kind: subprocess.Popen(
            [sys.executable, "-m", "pneumo.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for kind, args in commands.items()
    }
    finished = {}
    for kind, process in started.items():
        output, _ = process.communicate(timeout=900)
        finished[kind] = subprocess.CompletedProcess(process.args, process.returncode, output)
    return finished


def test_eval_and_monitor_runs_score_the_champion_through_the_server(server, team_run, scored):
    client = MlflowClient(server.url)
    for kind, ran in scored.items():
        assert ran.returncode == 0, ran.stdout[-3000:]
        experiment_id = team_run.parent.info.experiment_id
        (run,) = client.search_runs([experiment_id], f"tags.`pneumo.kind` = '{kind}'")
        assert run.info.status == "FINISHED" and run.data.tags[TAG_MODEL_URI].endswith("@champion")
        assert run.data.tags["data_fingerprint"], kind
        assert server.admin_password not in ran.stdout


def test_eval_and_monitor_runs_log_their_dataset(server, team_run, scored):
    client = MlflowClient(server.url)
    for kind, context in (("eval", "evaluation"), ("monitor", "monitoring")):
        (run,) = client.search_runs([team_run.parent.info.experiment_id], f"tags.`pneumo.kind` = '{kind}'")
        (logged,) = run.inputs.dataset_inputs
        assert logged.dataset.digest == dataset_digest(run.data.tags["data_fingerprint"])
        assert [(tag.key, tag.value) for tag in logged.tags] == [("mlflow.data.context", context)]


def test_pneumo_serve_loads_the_champion_through_the_server(server, team_run, synthetic_root):
    port = free_port()
    model = f"models:/{team_run.cfg.mlflow.registered_model_name}@champion"
    command = [sys.executable, "-m", "pneumo.cli", "serve", model, "--port", str(port)]
    command += ["--config", str(team_run.yaml), *team_run.overrides]
    served = subprocess.Popen(
        command,
        env=client_env(server.login()),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            with contextlib.suppress(requests.RequestException):
                ready = requests.get(f"{url}/readyz", timeout=10)
                if ready.status_code == 200 or ready.json().get("state") == "failed":
                    break
            assert served.poll() is None and time.monotonic() < deadline, "pneumo serve never got ready"
            time.sleep(1)
        assert ready.status_code == 200, ready.text
        film = next((synthetic_root / "test").glob("PNEUMONIA/*.jpeg"))
        answer = requests.post(
            f"{url}/predict", files={"file": (film.name, film.read_bytes(), "image/jpeg")}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert 0 <= answer.json()["probability"] <= 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(served.pid, signal.SIGINT)
        try:
            served.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait(timeout=30)
