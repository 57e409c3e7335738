"""Logins on the team server: pneumo takes credentials from MLflow's own environment variables only, and
a refused login, a missing permission, a server that does not answer or a database that refuses is one
line naming the variable or key to fix, raised by check_tracking_access before any training."""

import os
import re
import secrets
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from pneumo.config import ConfigError, DataConfig, ExperimentConfig, MlflowConfig
from pneumo.tracking import TAG_ACCESS_CHECK, check_tracking_access

from .servers import ADMIN, free_port

EXPERIMENT, MODEL = "logins", "logins-model"  # made by the admin: nobody else may write to them


def config(tracking_uri: str, register: bool = True) -> ExperimentConfig:
    settings = MlflowConfig(
        tracking_uri=tracking_uri, experiment_name=EXPERIMENT, registered_model_name=MODEL, register=register
    )
    return ExperimentConfig(name="logins", data=DataConfig(path="unused"), mlflow=settings)


def log_in(monkeypatch, login: dict[str, str]) -> None:
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if key in login:
            monkeypatch.setenv(key, login[key])
        else:
            monkeypatch.delenv(key, raising=False)


def refusal(cfg: ExperimentConfig) -> str:
    with pytest.raises(ConfigError) as refused:
        check_tracking_access(cfg)
    message = str(refused.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def admin_owned(server, as_admin):
    """The experiment and registered model, made by the admin through the check itself; and bob, a second
    user with the server's default permission (READ)."""
    check_tracking_access(config(server.url))
    bob = ("bob", secrets.token_urlsafe(12))
    server.create_user(*bob)
    return bob


def test_the_admin_passes_and_the_check_made_what_the_run_writes_to(server, admin_owned):
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags[TAG_ACCESS_CHECK] == ADMIN
    assert experiment.artifact_location.startswith("mlflow-artifacts:/"), "artifacts go through the server"
    assert client.get_registered_model(MODEL).tags[TAG_ACCESS_CHECK] == ADMIN


def test_a_wrong_or_missing_login_names_the_variables(server, admin_owned, monkeypatch):
    wrong = "not-" + server.admin_password
    log_in(monkeypatch, server.login(ADMIN, wrong))
    message = refusal(config(server.url))
    assert message == (
        f"MLflow at {server.url} refused the login of 'admin': check MLFLOW_TRACKING_PASSWORD (and MLFLOW_TRACKING_USERNAME)"
    )
    log_in(monkeypatch, {})
    assert refusal(config(server.url)) == (
        f"MLflow at {server.url} asks for a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    )


def test_a_user_without_permission_is_refused_then_passes_once_granted(server, admin_owned, monkeypatch):
    bob, password = admin_owned
    log_in(monkeypatch, server.login(bob, password))
    assert refusal(config(server.url)) == (
        f"MLflow user 'bob' may not write to experiment 'logins' (mlflow.experiment_name) at {server.url}: "
        "ask its owner or an MLflow admin for EDIT"
    )
    experiment_id = MlflowClient(server.url).get_experiment_by_name(EXPERIMENT).experiment_id
    server.grant(bob, "experiment", experiment_id, "EDIT")
    assert refusal(config(server.url)) == (
        f"MLflow user 'bob' may not write to registered model 'logins-model' (mlflow.registered_model_name; "
        f"or set mlflow.register=false) at {server.url}: ask its owner or an MLflow admin for EDIT"
    )
    check_tracking_access(config(server.url, register=False))  # runs without registering: allowed now


@pytest.mark.slow  # starts Ray (in the pneumo process)
def test_pneumo_run_without_permission_stops_in_one_line_before_training(server, admin_owned, smoke_yaml, tmp_path):
    """The CLI as bob on an experiment he may only read: exit 1, one line, no run, no password echoed."""
    bob, password = admin_owned
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env.update(server.login(bob, password))
    overrides = [f"mlflow.tracking_uri={server.url}", "mlflow.experiment_name=logins-read-only"]
    log_in_admin = {**env, **server.login()}
    subprocess.run(  # the admin makes the experiment; bob may read it (READ by default), not write to it
        [
            sys.executable,
            "-c",
            f"from mlflow import MlflowClient; MlflowClient({server.url!r}).create_experiment('logins-read-only')",
        ],
        env=log_in_admin,
        check=True,
        timeout=300,
    )
    ran = subprocess.run(
        [sys.executable, "-m", "pneumo.cli", "run", str(smoke_yaml), *overrides, "--verbose"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = ran.stdout + ran.stderr
    assert ran.returncode == 1 and "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if line.startswith("pneumo: ")]
    assert line == (
        f"pneumo: config error: MLflow user 'bob' may not write to experiment 'logins-read-only' "
        f"(mlflow.experiment_name) at {server.url}: ask its owner or an MLflow admin for EDIT"
    )
    assert password not in output
    client = MlflowClient(server.url, registry_uri=server.url)
    experiment_id = client.get_experiment_by_name("logins-read-only").experiment_id
    assert client.search_runs([experiment_id]) == [], "no run was opened"


def test_no_answer_a_password_in_the_uri_and_refusing_databases_are_one_line(server, admin_owned, monkeypatch):
    nobody = f"http://127.0.0.1:{free_port()}"
    assert (
        refusal(config(nobody))
        == f"MLflow tracking server {nobody} does not answer: start it, or fix mlflow.tracking_uri"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", nobody)
    assert refusal(config(None)).endswith("does not answer: start it, or fix MLFLOW_TRACKING_URI")

    with_password = server.url.replace("http://", f"http://admin:{server.admin_password}@")
    message = refusal(config(with_password))
    assert server.admin_password not in message and message.startswith(
        "mlflow.tracking_uri carries a password (http://admin:***@127.0.0.1:"
    )

    database = server.postgres.uri()  # the store itself, as a tracking URI, with a wrong PGPASSWORD
    monkeypatch.setenv("PGPASSWORD", "not-the-password")
    message = refusal(config(database))
    assert (
        message.startswith(f"the MLflow database {database} refuses: ") and "password authentication failed" in message
    )
    assert message.endswith("(fix mlflow.tracking_uri; its password goes in PGPASSWORD)")

    server.postgres.stop()  # the server's own database goes away: every request fails on the server
    try:
        message = refusal(config(server.url))
    finally:
        server.postgres.start()
    assert re.fullmatch(
        rf"MLflow at {server.url} answers HTTP 5\d\d to every request: its database may refuse it \(see the server's log\)",
        message,
    ), message
    check_tracking_access(config(server.url))  # the server reconnects once the database is back
