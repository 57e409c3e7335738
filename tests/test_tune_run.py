"""Real searches on a local Ray (2 CPUs): ASHA stops weak trials, nested MLflow runs, the registry's
champion alias, and a search whose driver is killed, then resumed."""

import os
import signal
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import pneumo_run, write_smoke_yaml
from mlflow.tracking import MlflowClient

from pneumo.config import load_config
from pneumo.experiment import run_experiment
from pneumo.tracking import TAG_TRIAL_ID, training_run_for

pytestmark = pytest.mark.slow

SEARCH = """\
tune:
  num_samples: 1
  grace_period: 3
  reduction_factor: 2
  search_space:
    train.lr: {grid: %s}
"""


def child_runs(client: MlflowClient, parent_run_id: str) -> list:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


@pytest.fixture(scope="module")
def first_search(ray_session, synthetic_root, tmp_path_factory):
    """A 3-trial grid search: one learning rate that learns and two that barely move."""
    directory = tmp_path_factory.mktemp("search")
    path = write_smoke_yaml(directory, synthetic_root, "search", SEARCH % "[1.0e-2, 1.0e-6, 1.0e-6]")
    # ASHA ranks trials by val AUROC (the default tune.metric) after 3 of 4 epochs, where the margin is wide:
    # at 1e-6 a trial is its initial model with BatchNorm statistics of the data (0.63-0.69); at 1e-2 three
    # epochs reach 0.93. After one epoch it is thin (0.72 against 0.64; 0.48 against 0.68 with another block
    # order). Training loss cannot rank them: averaged over the first epoch it is *higher* for a rate that
    # learns (0.40 against 0.37).
    cfg = load_config([path], ["train.epochs=4", "train.batch_size=8"])
    return directory, cfg, run_experiment(cfg)


def test_search_stops_weak_trials_and_logs_nested_runs(first_search):
    _, cfg, outcome = first_search
    client = MlflowClient(cfg.mlflow.tracking_uri)
    parent = client.get_run(outcome.mlflow_run_id)
    children = child_runs(client, parent.info.run_id)

    assert parent.info.status == "FINISHED" and parent.data.tags["pneumo.kind"] == "search"
    assert len(children) == 3 and len({c.data.tags[TAG_TRIAL_ID] for c in children}) == 3
    assert parent.data.metrics["n_trials"] == 3
    stopped = [c for c in children if c.data.tags.get("pneumo.stopped_early") == "true"]
    assert stopped, "ASHA stopped no trial"
    for child in stopped:  # closed by the driver's SearchWatcher when ASHA stopped it, saying at which epoch
        state = child.data.tags["pneumo.trial_state"]
        assert state.startswith("stopped by ASHA at epoch "), state
        decided, logged = int(state.rsplit(" ", 1)[1]), len(client.get_metric_history(child.info.run_id, "val_auroc"))
        # the workers train on while the stop travels from Tune's driver to them: the epoch under way when
        # ASHA decided can still finish and log its metrics, after the watcher closed the run
        assert 1 <= decided < cfg.train.epochs and decided <= logged <= decided + 1, (state, logged)
    assert parent.data.metrics["n_trials_stopped_early"] == len(stopped)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_auroc")]
        assert steps == sorted(set(steps)) and steps[0] == 0, "one value per epoch, no duplicates"
        assert child.data.params["train.lr"] in ("0.01", "1e-06")
        assert child.info.status == "FINISHED"
    assert "test_auroc" in parent.data.metrics and "best_val_auroc" in parent.data.metrics

    # the two trials at 1e-6 are one config and one seed: the same films reach each worker in the same order
    # (they did not while Ray Data handed out blocks as they came: train loss 0.3706 against 0.3724)
    twins = [c for c in children if c.data.params["train.lr"] == "1e-06"]
    first_epochs = [
        {key: client.get_metric_history(c.info.run_id, key)[0].value for key in ("train_loss", "val_loss")}
        for c in twins
    ]
    assert first_epochs[0] == first_epochs[1], first_epochs

    # the report draws the training curves of the trial whose checkpoint won
    winner = training_run_for(client, parent.info.run_id)
    assert winner in {c.info.run_id for c in children}
    assert outcome.test_metrics and (Path(outcome.report_path).parent / "training_curves.png").stat().st_size > 0
    winner_auroc = [m.value for m in client.get_metric_history(winner, "val_auroc")]
    assert max(winner_auroc) == pytest.approx(parent.data.metrics["best_val_auroc"])


def test_best_model_is_registered_as_champion_and_predicts(first_search, synthetic_root):
    _, cfg, outcome = first_search
    assert outcome.model_version.aliases == ["champion"]
    client = MlflowClient(cfg.mlflow.tracking_uri)
    version = client.get_model_version_by_alias(cfg.mlflow.registered_model_name, "champion")
    assert version.run_id == outcome.mlflow_run_id
    assert float(version.tags["test_auroc"]) == pytest.approx(outcome.test_metrics["auroc"], abs=1e-5)
    assert len(version.tags["data_fingerprint"]) == 64 and "config" in version.tags
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model_name}@champion")
    assert model.metadata.signature.inputs.input_names() == ["image"]
    films = sorted((synthetic_root / "test").glob("*/*.jpeg"))[:6]
    predicted = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in films]}))
    assert predicted["probability"].between(0, 1).all() and set(predicted["label"]) <= {0, 1}


def wait_for_finished_trial(client: MlflowClient, cfg, timeout_s: float) -> str:
    """The id of the search's parent run once one of its trials has finished."""
    deadline = time.monotonic() + timeout_s
    searches = f"tags.`pneumo.kind` = 'search' and tags.`pneumo.experiment` = '{cfg.name}'"
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(cfg.mlflow.experiment_name)
        for parent in client.search_runs([exp.experiment_id], searches) if exp else []:
            if any(c.info.status == "FINISHED" for c in child_runs(client, parent.info.run_id)):
                return parent.info.run_id
        time.sleep(1)
    raise AssertionError("no trial finished in time")


@pytest.mark.extended  # make test-extended: a second 3-trial search, killed and resumed
def test_killed_worse_search_resumes_without_logging_twice_and_leaves_champion(
    first_search, ray_session, synthetic_root
):
    """The search's driver SIGKILLed once a trial has finished (no handler runs: nothing saved, nothing
    closed), then resumed: the same search run goes on, no trial run is duplicated, the finished trial is
    not redone, every epoch is logged once, and the worse result leaves the champion alone."""
    directory, first_cfg, first = first_search
    path = write_smoke_yaml(directory, synthetic_root, "worse", SEARCH % "[1.0e-6, 2.0e-6, 3.0e-6]")
    overrides = ["train.epochs=2", "tune.scheduler=fifo", "scaling.num_workers=1"]  # 2 trials at once
    cfg = load_config([path], overrides)
    driver = pneumo_run([str(path), *overrides], ray_session, quiet=True)  # killpg takes its children too
    client = MlflowClient(cfg.mlflow.tracking_uri)
    try:
        parent_id = wait_for_finished_trial(client, cfg, timeout_s=300)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=120)
    finished_before = {
        c.data.tags[TAG_TRIAL_ID]: client.get_metric_history(c.info.run_id, "val_auroc")
        for c in child_runs(client, parent_id)
        if c.info.status == "FINISHED"
    }
    assert 1 <= len(finished_before) < 3 and client.get_run(parent_id).info.status == "RUNNING"

    outcome = run_experiment(cfg, resume=True)

    assert outcome.mlflow_run_id == parent_id, "the same search run continued"
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials"] == 3
    assert parent.data.metrics["n_trials_stopped_early"] == 0, "FIFO stops no trial, before or after the kill"
    children = child_runs(client, parent_id)
    assert len({c.data.tags[TAG_TRIAL_ID] for c in children}) == len(children) == 3, "no duplicate trial runs"
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_auroc")
        assert sorted(m.step for m in history) == [0, 1], "each epoch logged once"
        assert child.info.status == "FINISHED" and child.data.tags["pneumo.trial_state"] == "completed"
        before = finished_before.get(child.data.tags[TAG_TRIAL_ID])
        if before is not None:  # not redone: its epochs are the ones logged before the kill
            assert sorted((m.step, m.timestamp) for m in history) == sorted((m.step, m.timestamp) for m in before)
    assert outcome.test_metrics["auroc"] < first.test_metrics["auroc"]
    name = cfg.mlflow.registered_model_name
    assert client.get_model_version_by_alias(name, "champion").version == first.model_version.version
    assert client.get_model_version_by_alias(name, "challenger").version == outcome.model_version.version
