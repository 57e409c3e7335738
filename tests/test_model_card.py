"""The model card in a registered version's description, and the experiment's MLflow view, against a
real sqlite store."""

import json

import pytest
from mlflow.tracking import MlflowClient

from pneumo.config import load_config
from pneumo.data.synthetic import SYNTHETIC_MARKER
from pneumo.registry.register import register_model_folder
from pneumo.tracking import (
    MODEL_TRAINING_KIND,
    TAG_EXPERIMENT_KIND,
    ensure_experiment,
    finish_run,
    log_metrics,
    start_run,
)

RUN_METRICS = {
    "test_auroc": 0.972,
    "test_auroc_ci_low": 0.941,
    "test_auroc_ci_high": 0.995,
    "test_sensitivity": 0.952,
    "test_sensitivity_ci_low": 0.91,
    "test_sensitivity_ci_high": 0.98,
    "test_ece": 0.065,
    "test_ece_uncalibrated": 0.194,
    "test_tp": 118,
    "test_fn": 6,
    "test_tn": 48,
    "test_fp": 2,
    "data.train.NORMAL": 268,
    "data.train.PNEUMONIA": 701,
    "data.test.NORMAL": 50,
    "data.test.PNEUMONIA": 124,
}
META = {
    "model": {"name": "resnet10t", "global_pool": "max"},
    "preprocessing": {"image_size": 64},
    "decision_threshold": 0.2731,
    "temperature": 1.52,
    "logit_bias": -0.41,
}


def registered_description(tmp_path, mlflow_uri, synthetic: bool) -> str:
    data = tmp_path / "films"
    data.mkdir()
    if synthetic:
        (data / SYNTHETIC_MARKER).write_text("# Synthetic chest X-rays\n")
    yaml = tmp_path / "exp.yaml"
    yaml.write_text(
        f"name: card\ndata: {{path: {data}}}\nmodel: {{name: resnet10t}}\n"
        f"eval: {{threshold_policy: sensitivity, target_sensitivity: 0.9}}\n"
        f"mlflow: {{tracking_uri: '{mlflow_uri}', registered_model_name: card-model}}\n"
    )
    cfg = load_config([yaml])
    model_folder = tmp_path / "model" / "artifacts" / "best_model"
    model_folder.mkdir(parents=True)
    (model_folder / "pneumo.json").write_text(json.dumps(META))
    client = MlflowClient(mlflow_uri)
    run_id = start_run(client, cfg, "train", "card")
    log_metrics(client, run_id, RUN_METRICS)
    version = register_model_folder(client, cfg, run_id, tmp_path / "model", {"test_auroc": 0.972}, "f1ng3rpr1nt")
    finish_run(client, run_id)
    return client.get_model_version("card-model", version.version).description


def test_the_registered_version_carries_a_model_card(tmp_path, mlflow_uri):
    card = registered_description(tmp_path, mlflow_uri, synthetic=True)
    assert "**resnet10t** (max-pooled head) at 64 px" in card and "Not for diagnostic use" in card
    assert "fingerprint `f1ng3rpr1nt`" in card
    assert "- train: 969 films (268 NORMAL, 701 PNEUMONIA)" in card and "- test: 174 films" in card
    assert "**Trained on synthetic films**" in card
    assert "174 test films" in card and "| auroc | 0.972 | 0.941 - 0.995 |" in card
    assert "| sensitivity | 0.952 | 0.910 - 0.980 |" in card
    assert ">= **0.2731**: `sensitivity` policy (sensitivity >= 0.9 on val)" in card
    assert (
        "sigmoid(logit / 1.5200 -0.4100)" in card
        and "test expected calibration error 0.065 (uncalibrated 0.194)" in card
    )
    assert "## Intended use" in card and "## Limitations" in card


def test_a_card_for_real_data_does_not_say_synthetic(tmp_path, mlflow_uri):
    assert "synthetic" not in registered_description(tmp_path, mlflow_uri, synthetic=False).lower()


@pytest.mark.parametrize("existing", [False, True])
def test_the_experiment_opens_in_the_model_training_view(mlflow_uri, existing):
    client = MlflowClient(mlflow_uri)
    if existing:  # made before pneumo tagged experiments, or by someone else
        client.create_experiment("pneumo")
    experiment_id = ensure_experiment(client, "pneumo")
    assert client.get_experiment(experiment_id).tags[TAG_EXPERIMENT_KIND] == MODEL_TRAINING_KIND


def test_an_experiment_kind_someone_chose_is_kept(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("pneumo", tags={TAG_EXPERIMENT_KIND: "genai_development"})
    ensure_experiment(client, "pneumo")
    assert client.get_experiment(experiment_id).tags[TAG_EXPERIMENT_KIND] == "genai_development"
