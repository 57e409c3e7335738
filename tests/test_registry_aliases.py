"""The registry's champion rule on a real sqlite MLflow store: who takes `champion`, who stays `challenger`."""

from dataclasses import replace

import pytest

from pneumo.config import DataConfig, ExperimentConfig, MlflowConfig
from pneumo.registry.aliases import CHALLENGER, CHAMPION, beats_champion
from pneumo.registry.register import register_model_folder
from pneumo.tracking import client_for, finish_run, log_metrics, start_run


@pytest.fixture
def store(mlflow_uri, tmp_path):
    """A fresh sqlite registry and a model folder to register (its content is not read)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    cfg = ExperimentConfig(
        name="champion-rule", data=DataConfig(path="unused"), mlflow=MlflowConfig(tracking_uri=mlflow_uri)
    )
    return cfg, client_for(cfg), tmp_path / "model"


def register(store, name: str, metrics: dict[str, float], **mlflow_settings) -> str:
    """Register one version of `name` through pneumo's own path; the alias it was given."""
    cfg, client, folder = store
    cfg = replace(cfg, mlflow=replace(cfg.mlflow, registered_model_name=name, **mlflow_settings))
    run_id = start_run(client, cfg, "train", name)
    log_metrics(client, run_id, metrics)  # as `pneumo run` logs the test metrics before registering
    version = register_model_folder(client, cfg, run_id, folder, metrics, fingerprint="f" * 64)
    finish_run(client, run_id)
    return version.aliases[0]


def test_first_version_is_champion_then_only_a_better_one_replaces_it(store):
    _, client, _ = store
    settings = MlflowConfig()
    assert beats_champion(client, "max-model", settings, {"test_auroc": 0.1}), "no registered model yet"
    assert register(store, "max-model", {"test_auroc": 0.80}) == CHAMPION
    assert not beats_champion(client, "max-model", settings, {"test_auroc": 0.79})
    assert not beats_champion(client, "max-model", settings, {"test_auroc": 0.80}), "a tie keeps the champion"
    assert register(store, "max-model", {"test_auroc": 0.70}) == CHALLENGER
    assert register(store, "max-model", {"test_auroc": 0.90}) == CHAMPION
    assert str(client.get_model_version_by_alias("max-model", CHAMPION).version) == "3"


def test_min_mode_prefers_the_lower_metric(store):
    _, client, _ = store
    settings = {"champion_metric": "test_loss", "champion_mode": "min"}
    assert register(store, "min-model", {"test_loss": 0.5}, **settings) == CHAMPION
    assert not beats_champion(client, "min-model", MlflowConfig(**settings), {"test_loss": 0.6})
    assert beats_champion(client, "min-model", MlflowConfig(**settings), {"test_loss": 0.4})
    assert register(store, "min-model", {"test_loss": 0.6}, **settings) == CHALLENGER
    assert register(store, "min-model", {"test_loss": 0.4}, **settings) == CHAMPION


def test_a_registered_model_without_champion_or_without_the_metric_is_beaten(store):
    _, client, _ = store
    client.create_registered_model("no-champion")
    assert beats_champion(client, "no-champion", MlflowConfig(), {"test_auroc": 0.1})
    assert register(store, "no-metric", {"test_f1": 0.9}) == CHAMPION  # registered before auroc was logged
    assert beats_champion(client, "no-metric", MlflowConfig(), {"test_auroc": 0.1})
    assert register(store, "no-metric", {"test_auroc": 0.1}) == CHAMPION


def test_an_exact_tie_keeps_the_champion_even_where_the_tag_is_rounded(store):
    """The champion's version tag is written to 6 significant digits ("0.981129"); the comparison reads
    the run's own metric, so a rerun that scores exactly the same becomes the challenger."""
    auroc = 0.981129032258065
    assert f"{auroc:.6g}" != repr(auroc), "the value must not survive the tag's rounding"
    assert register(store, "tie-model", {"test_auroc": auroc}) == CHAMPION
    _, client, _ = store
    assert not beats_champion(client, "tie-model", MlflowConfig(), {"test_auroc": auroc})
    assert register(store, "tie-model", {"test_auroc": auroc}) == CHALLENGER
    assert str(client.get_model_version_by_alias("tie-model", CHAMPION).version) == "1"
