"""pneumo end to end against a team's MLflow server: PostgreSQL behind it, artifacts proxied into its
folder, logins on. One `pneumo run` (a 2-trial search, both trials at once, logged in as the admin
through MLflow's environment variables) serves every check; `pneumo eval`, `pneumo monitor` and
`pneumo serve` then read its champion through the server. The same checks the sqlite tests make
(tests/test_run_faults.py, tests/test_tune_run.py): nothing lost, nothing logged twice. Last, a training
outlives the server dying and coming back."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_smoke_yaml
from mlflow.tracking import MlflowClient

from pneumo.config import load_config
from pneumo.tracking import TAG_MODEL_URI, dataset_digest

from .servers import free_port, restart_team_server, wait_until_healthy

# the server, one search, eval and monitor, a training through an outage: ~6 min on a quiet 2-core machine,
# 15+ under load; make test-extended (make test runs the logins and lineage against the same server)
pytestmark = [pytest.mark.slow, pytest.mark.extended, pytest.mark.timeout(2400)]
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


def client_env(login: dict[str, str], ray_session) -> dict[str, str]:
    """The environment of a `pneumo` command logged in through `login`, joining the session's Ray as a
    `ray job submit --runtime-env-json '{"env_vars": LOGIN}'` job does: the trials' workers get the login
    from the job's runtime environment (docs/how-to/team-mlflow.md)."""
    job = {"runtime_env": {"env_vars": login}}
    return {
        **os.environ,
        **login,
        "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address,
        "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job),
    }


def start_pneumo(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`pneumo ARGS` started, its output (stdout and stderr) kept in `log` as it comes (readable while it runs)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pneumo.cli", *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def pneumo(args: list[str], env: dict[str, str], log: Path, timeout_s: float = 1200) -> subprocess.CompletedProcess:
    """`pneumo ARGS` run to its end (killed after `timeout_s`), with the output it kept in `log`."""
    process = start_pneumo(args, env, log)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, log.read_text())


@dataclass
class TeamRun:
    yaml: Path
    overrides: list[str]
    cfg: Any
    output: str  # the command's stdout and stderr (--verbose: everything it printed)
    parent: Any  # the search's MLflow run
    children: list  # its trial runs


@pytest.fixture(scope="module")
def team_run(server, as_admin, ray_session, synthetic_root, tmp_path_factory) -> TeamRun:
    directory = tmp_path_factory.mktemp("team_run")
    yaml = write_smoke_yaml(directory, synthetic_root, "team", SEARCH)
    overrides = [*QUICK, "mlflow.system_metrics_interval_s=1", f"mlflow.tracking_uri={server.url}"]
    ran = pneumo(
        ["run", str(yaml), *overrides, "--verbose"], client_env(server.login(), ray_session), directory / "run.log"
    )
    output = ran.stdout
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
    # system metrics from every trial reach the server through the login (pneumo's sampler does not wait on a busy
    # server; MLflow's own lost a trial's samples here: 1 and 0 of ~30)
    sampled = {
        c.info.run_name: len(client.get_metric_history(c.info.run_id, "system/cpu_utilization_percentage"))
        for c in children
    }
    assert all(n >= 2 for n in sampled.values()), f"system metrics samples per trial: {sampled}"
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


def test_a_pg_dump_of_the_store_restores_runs_metrics_and_the_registry(server, team_run, monkeypatch):
    """The backup docs/how-to/team-mlflow.md gives (pg_dump -Fc, pg_restore), read back by MLflow itself."""
    dump = server.postgres.root / "mlflow.dump"
    server.postgres.run("pg_dump", "-Fc", "-f", str(dump), "mlflow")
    server.postgres.run("createdb", "restored")
    server.postgres.run("pg_restore", "-d", "restored", str(dump))
    monkeypatch.setenv("PGPASSWORD", server.postgres.password)
    live, restored = MlflowClient(server.url), MlflowClient(server.postgres.uri("restored"))
    experiment_id = team_run.parent.info.experiment_id
    assert {r.info.run_id for r in restored.search_runs([experiment_id])} == {
        r.info.run_id for r in live.search_runs([experiment_id])
    }
    for child in team_run.children:
        history = restored.get_metric_history(child.info.run_id, "val_auroc")
        assert [(m.step, m.value) for m in history] == [
            (m.step, m.value) for m in live.get_metric_history(child.info.run_id, "val_auroc")
        ]
    name = team_run.cfg.mlflow.registered_model_name
    champion = [str(store.get_model_version_by_alias(name, "champion").version) for store in (restored, live)]
    assert champion[0] == champion[1]  # the store gives an int, the REST client a str


@pytest.fixture(scope="module")
def scored(server, team_run, ray_session, synthetic_root) -> dict[str, subprocess.CompletedProcess]:
    """`pneumo eval` and `pneumo monitor` of the champion, at once, each through the server."""
    model = f"models:/{team_run.cfg.mlflow.registered_model_name}@champion"
    config = ["--config", str(team_run.yaml), *team_run.overrides]
    commands = {
        "eval": ["eval", model, str(synthetic_root), "--verbose", *config],
        "monitor": ["monitor", model, str(synthetic_root), "--split", "test", "--verbose", *config],
    }
    env = client_env(server.login(), ray_session)
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
    name = team_run.cfg.mlflow.registered_model_name
    champion = client.get_model_version_by_alias(name, "champion").version
    for kind, ran in scored.items():
        assert ran.returncode == 0, ran.stdout[-3000:]
        experiment_id = team_run.parent.info.experiment_id
        (run,) = client.search_runs([experiment_id], f"tags.`pneumo.kind` = '{kind}'")
        assert (
            run.info.status == "FINISHED" and run.data.tags[TAG_MODEL_URI] == f"models:/{name}/{champion}"
        )  # the alias, pinned to its version
        assert run.data.tags["data_fingerprint"], kind
        assert server.admin_password not in ran.stdout


def test_eval_and_monitor_runs_log_their_dataset(server, team_run, scored):
    client = MlflowClient(server.url)
    for kind, context in (("eval", "evaluation"), ("monitor", "monitoring")):
        (run,) = client.search_runs([team_run.parent.info.experiment_id], f"tags.`pneumo.kind` = '{kind}'")
        (logged,) = run.inputs.dataset_inputs
        assert logged.dataset.digest == dataset_digest(run.data.tags["data_fingerprint"])
        assert [(tag.key, tag.value) for tag in logged.tags] == [("mlflow.data.context", context)]


def test_the_serve_loader_loads_the_champion_through_the_server(server, team_run, as_admin, synthetic_root):
    """What a `pneumo serve` replica runs to load its model (pneumo.serve.loader), through the server with
    the login from the environment. (The command itself would start a Ray of its own, or replace the
    Serve app of the session's Ray; its own tests cover it on sqlite.)"""
    from pneumo.config import ServeConfig
    from pneumo.data.sources import load_image
    from pneumo.serve.loader import load_served_model

    name = team_run.cfg.mlflow.registered_model_name
    served = load_served_model(f"models:/{name}@champion", server.url, ServeConfig(runtime="torch"))
    champion = MlflowClient(server.url).get_model_version_by_alias(name, "champion")
    assert str(served.fetched.version) == str(champion.version)
    spec = served.fetched.loaded.meta.preprocessing_spec
    films = sorted((synthetic_root / "test").glob("*/*.jpeg"))[:4]
    images = np.stack([load_image(str(film), spec, 40_000_000)[0] for film in films])
    probabilities, _ = served.score(images)
    assert probabilities.shape == (4,) and ((probabilities >= 0) & (probabilities <= 1)).all()


def chosen_view(page) -> str:
    """The workflow the UI shows ("GenAI" or "Model training"): the toggle's darker label."""
    darkness = {}
    for label in ("GenAI", "Model training"):
        color = page.get_by_text(label, exact=True).first.evaluate("e => getComputedStyle(e).color")
        darkness[label] = -sum(int(c) for c in color[color.index("(") + 1 : -1].split(",")[:3])
    return max(darkness, key=darkness.get)


def open_fresh(browser, url: str, shows: str, login: tuple[str, str] | None = None) -> tuple[str, str]:
    """`url` in a new browser profile (no stored view choice): (the view it lands in, the page's text)."""
    credentials = {"username": login[0], "password": login[1]} if login else None
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, http_credentials=credentials)
    page = context.new_page()
    page.goto(url, timeout=120_000)
    page.get_by_text(shows).first.wait_for(timeout=240_000)
    view, text = chosen_view(page), page.inner_text("body")
    context.close()
    return view, text


def sqlite_store_with_a_search(folder: Path) -> tuple[str, str, str]:
    """A local store as `pneumo run` leaves it, without training: a search run, two trial runs, a
    registered version with a card; (store URI, experiment id, parent run id)."""
    from pneumo.config import DataConfig, ExperimentConfig, MlflowConfig
    from pneumo.tracking import ensure_experiment, finish_run, start_run

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    cfg = ExperimentConfig(name="links", data=DataConfig(path="unused"), mlflow=MlflowConfig(tracking_uri=uri))
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, cfg.mlflow.experiment_name)
    parent = start_run(client, cfg, "search", "links-search", params={})
    for trial in ("trial-a", "trial-b"):
        finish_run(client, start_run(client, cfg, "trial", trial, parent_run_id=parent, params={}))
    finish_run(client, parent)
    client.create_registered_model("links-model")
    version = client.create_model_version(
        "links-model", f"runs:/{parent}/model", run_id=parent, description="## Data\n- the card"
    )
    client.set_registered_model_alias("links-model", "champion", version.version)
    return uri, experiment_id, parent


def test_the_printed_links_open_the_training_view_in_a_fresh_browser(server, team_run, tmp_path):
    """The links `pneumo run` printed (its search, its registered version) and a run's page, against the team
    server (logged in) and `mlflow ui` on a sqlite store; the same run page without the view parameter lands
    in GenAI, as a fresh profile does."""
    from mlflow_ui import CHROMIUM
    from playwright.sync_api import sync_playwright

    from pneumo.tracking import MLFLOW_UI_ADDRESS, model_version_url, run_url, search_url

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    parent = team_run.parent.info
    name = team_run.cfg.mlflow.registered_model_name
    version = MlflowClient(server.url).get_model_version_by_alias(name, "champion").version
    store, local_experiment, local_parent = sqlite_store_with_a_search(tmp_path)
    assert run_url(store, "1", "r").startswith(f"{MLFLOW_UI_ADDRESS}/#/experiments/1/runs/r?")
    port = free_port()
    log = tmp_path / "mlflow-ui.log"
    with log.open("w") as out:
        ui = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "ui",
                "--backend-store-uri",
                store,
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    local = f"http://127.0.0.1:{port}"
    admin = ("admin", server.admin_password)
    printed = re.findall(r"^\s+open:\s+(\S+)$", team_run.output, re.M)  # `mlflow run:`'s, `registered:`'s
    assert printed == [
        search_url(server.url, parent.experiment_id, parent.run_id),
        model_version_url(server.url, name, version),
    ]
    links = [  # (link, text it must show, login)
        (run_url(server.url, parent.experiment_id, parent.run_id), parent.run_name, admin),
        (printed[0], "3 matching runs", admin),
        (printed[1], "MLflow dataset digest", admin),
        (run_url(local, local_experiment, local_parent), "links-search", None),
        (search_url(local, local_experiment, local_parent), "3 matching runs", None),
        (model_version_url(local, "links-model", 1), "the card", None),
    ]
    try:
        wait_until_healthy(local, ui, log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            for link, shows, login in links:
                view, text = open_fresh(browser, link, shows, login)
                assert view == "Model training", (link, text[:500])
            plain = run_url(local, local_experiment, local_parent).partition("?")[0]
            assert open_fresh(browser, plain, "links-search")[0] == "GenAI", "without the parameter: GenAI"
            browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait(timeout=30)


OUTAGE_S = 10


def test_a_training_outlives_its_team_server_dying_and_coming_back(
    server, as_admin, ray_session, synthetic_root, tmp_path
):
    """The team server killed once the first epoch has arrived, and started again OUTAGE_S later over the same
    database and port: the training goes on (MLflow's client retries), every epoch arrives once, the run
    finishes and is evaluated."""
    yaml = write_smoke_yaml(tmp_path, synthetic_root, "outage")
    experiment = "team-outage"
    overrides = [*QUICK, "train.epochs=4", f"mlflow.tracking_uri={server.url}", f"mlflow.experiment_name={experiment}"]
    log = tmp_path / "run.log"
    driver = start_pneumo(["run", str(yaml), *overrides], client_env(server.login(), ray_session), log)
    client = MlflowClient(server.url)

    def training_run():
        found = client.get_experiment_by_name(experiment)
        runs = client.search_runs([found.experiment_id], "tags.`pneumo.kind` = 'train'") if found else []
        return runs[0] if runs else None

    try:
        deadline = time.monotonic() + 600
        while (run := training_run()) is None or not client.get_metric_history(run.info.run_id, "val_auroc"):
            assert time.monotonic() < deadline and driver.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
        restart_team_server(server, down_s=OUTAGE_S)
        driver.wait(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, log.read_text()[-3000:]
    run = client.get_run(training_run().info.run_id)
    assert run.info.status == "FINISHED" and "test_auroc" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auroc")] == [0, 1, 2, 3]
