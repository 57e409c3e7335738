"""End-to-end training on a real local Ray: 2 workers on Ray Data, MLflow run, checkpoint, resume."""

import signal
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import pneumo_run
from mlflow.tracking import MlflowClient

from pneumo.cli import main as pneumo_main
from pneumo.config import load_config
from pneumo.data.transforms import decode_image
from pneumo.evaluation.prediction import predict_probabilities
from pneumo.experiment import run_experiment
from pneumo.models.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def trained(smoke_run):
    """The session's finished 2-epoch smoke run (conftest), shared by the tests that inspect what it left behind."""
    return smoke_run.cfg, smoke_run.outcome, smoke_run.yaml


def test_two_worker_run_logs_to_mlflow_and_registers(trained, synthetic_root):
    cfg, outcome, _ = trained
    client = MlflowClient(cfg.mlflow.tracking_uri)
    run = client.get_run(outcome.mlflow_run_id)

    assert run.info.status == "FINISHED"
    assert metric_steps(client, run.info.run_id, "val_auroc") == [0, 1], "one value per epoch, rank 0 only"
    assert metric_steps(client, run.info.run_id, "train_loss") == [0, 1]
    assert run.data.params["train.lr"] == "0.01" and run.data.params["scaling.num_workers"] == "2"
    assert run.data.tags["data_fingerprint"] == outcome_fingerprint(run)
    for key in ("test_auroc", "test_sensitivity", "test_specificity", "test_f1", "data.n_images"):
        assert key in run.data.metrics
    assert (
        run.data.metrics["test_auroc_ci_low"]
        <= run.data.metrics["test_auroc"]
        <= run.data.metrics["test_auroc_ci_high"]
    )
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "best_checkpoint", "report"} <= artifacts
    report_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "report")}
    assert {
        "report.html",
        "roc.png",
        "pr.png",
        "confusion.png",
        "reliability.png",
        "training_curves.png",
        "mistakes.png",
    } <= report_files

    loaded = load_checkpoint(outcome.model_dir)
    assert loaded.meta.decision_threshold == pytest.approx(outcome.test_metrics["threshold"])
    assert loaded.meta.temperature != 1.0, "temperature fitted on val and stored with the model"
    assert outcome.model_version.aliases == ["champion"]

    images = [p.read_bytes() for p in sorted((synthetic_root / "test" / "PNEUMONIA").glob("*.jpeg"))[:4]]
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    served = mlflow.pyfunc.load_model(f"models:/{cfg.mlflow.registered_model_name}@champion")
    predicted = served.predict(pd.DataFrame({"image": images}))
    spec = loaded.meta.preprocessing_spec
    offline = predict_probabilities(loaded, torch.from_numpy(np.stack([decode_image(b, spec) for b in images])))
    np.testing.assert_allclose(predicted["probability"].to_numpy(), offline, atol=1e-6)
    assert list(predicted["label"]) == [int(p >= loaded.meta.decision_threshold) for p in offline]


def test_first_epoch_carries_where_the_start_up_went(trained):
    """Rank 0's first epoch logs when its process had imported, entered the loop, had the model,
    started the epoch and got its first batch (bench/overhead_bench.py splits start-up by these)."""
    cfg, outcome, _ = trained
    client = MlflowClient(cfg.mlflow.tracking_uri)
    order = ("worker_imported_at", "loop_started_at", "model_ready_at", "epoch_started_at", "first_batch_at")
    first_epoch = {key: client.get_metric_history(outcome.mlflow_run_id, key) for key in (*order, "epoch_finished_at")}
    assert [m.step for m in first_epoch["worker_imported_at"]] == [0], "sent with the first epoch only"
    times = [first_epoch[key][0].value for key in order] + [min(m.value for m in first_epoch["epoch_finished_at"])]
    assert times == sorted(times)
    assert times[-1] - times[0] < 3600


def test_eval_scores_a_registered_model_and_a_checkpoint_folder(trained, tmp_path, capsys):
    cfg, outcome, yaml = trained
    from pneumo.jobs.evaluate import evaluate_model

    registered = evaluate_model(
        f"models:/{cfg.mlflow.registered_model_name}@champion", cfg, "test", tmp_path / "registry"
    )
    evaluation = registered.evaluation
    assert evaluation.metrics["auroc"] == pytest.approx(outcome.test_metrics["auroc"])
    assert evaluation.threshold == pytest.approx(outcome.test_metrics["threshold"]), "the stored threshold is used"
    page = Path(registered.report_path).read_text()
    assert "models:/pneumo-pneumonia/1" in page and "Training curves" in page
    client = MlflowClient(cfg.mlflow.tracking_uri)
    eval_run = client.get_run(registered.mlflow_run_id)
    assert eval_run.data.tags["pneumo.kind"] == "eval" and "test_auroc_ci_high" in eval_run.data.metrics

    pneumo_main(
        [
            "eval",
            outcome.model_dir,
            cfg.data.path,
            "--out",
            str(tmp_path / "folder"),
            "--config",
            str(yaml),
            "eval.bootstrap_samples=50",
        ]
    )
    printed = capsys.readouterr().out
    assert f"auroc              {outcome.test_metrics['auroc']:.4f}" in printed
    assert (tmp_path / "folder" / "report.html").stat().st_size > 10_000


def outcome_fingerprint(run) -> str:
    fingerprint = run.data.tags["data_fingerprint"]
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    return fingerprint


def wait_for_epoch(client: MlflowClient, experiment: str, epoch: int, timeout_s: float) -> str:
    """The run id once its val_auroc for `epoch` is in MLflow."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        for run in runs:
            if epoch in metric_steps(client, run.info.run_id, "val_auroc"):
                return run.info.run_id
        time.sleep(1)
    raise AssertionError(f"epoch {epoch} never reached MLflow")


@pytest.mark.extended  # make test-extended: two runs (make test resumes after a full disk)
def test_interrupted_run_resumes_from_latest_checkpoint(ray_session, smoke_yaml):
    # smoke epochs take about a second: 12 of them leave the interrupt after epoch 0 ample time
    overrides = ["train.epochs=12"]
    cfg = load_config([smoke_yaml], overrides)
    driver = pneumo_run([str(smoke_yaml), *overrides], ray_session, quiet=True)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    try:
        run_id = wait_for_epoch(client, cfg.mlflow.experiment_name, 0, timeout_s=240)
    finally:
        driver.send_signal(signal.SIGINT)  # what Ctrl-C does to `pneumo run`
        driver.wait(timeout=60)
    assert client.get_run(run_id).info.status != "FINISHED"
    interrupted_at = max(metric_steps(client, run_id, "val_auroc"))
    assert interrupted_at < 11

    outcome = run_experiment(cfg, resume=True)

    assert outcome.mlflow_run_id == run_id, "resume continues the same MLflow run"
    assert client.get_run(run_id).info.status == "FINISHED"
    assert metric_steps(client, run_id, "val_auroc") == list(range(12)), "no epoch redone, none missing"
    assert load_checkpoint(outcome.model_dir).meta.epoch >= 0


def test_resume_without_an_unfinished_run_says_so(ray_session, smoke_yaml):
    from pneumo.config import ConfigError

    with pytest.raises(ConfigError, match="no unfinished train run"):
        run_experiment(load_config([smoke_yaml], ["name=never-ran"]), resume=True)


def test_a_rerun_trains_the_same_model_bit_for_bit_and_leaves_the_champion(trained, tmp_path):
    """Same machine, same YAML, same data: the same weights; the rerun ties the champion's test AUROC
    exactly, so it is registered as the challenger and `champion` stays where it was. The rerun logs
    to a copy of the smoke run's store, so the session's registry keeps a single version."""
    import shutil

    from pneumo.registry.aliases import CHALLENGER, CHAMPION

    cfg, first, yaml = trained
    store = tmp_path / "mlflow.db"
    shutil.copy(cfg.mlflow.tracking_uri.removeprefix("sqlite:///"), store)
    again = run_experiment(load_config([yaml], [f"mlflow.tracking_uri=sqlite:///{store}"]))
    weights = [(Path(outcome.model_dir) / "model.safetensors").read_bytes() for outcome in (first, again)]
    assert weights[0] == weights[1], "one machine, one config, one seed: one model"
    assert again.test_metrics["auroc"] == first.test_metrics["auroc"]
    client = MlflowClient(f"sqlite:///{store}")
    name = cfg.mlflow.registered_model_name
    assert list(again.model_version.aliases) == [CHALLENGER]
    assert client.get_model_version_by_alias(name, CHAMPION).version == first.model_version.version
