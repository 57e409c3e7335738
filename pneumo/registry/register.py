"""A checkpoint folder becomes a registered model version: saved as the pneumo pyfunc flavour, logged
into its run, registered with its metrics, config and data fingerprint as tags and its card as the
description, then given `champion` or `challenger` (aliases.py).

    version = register_checkpoint(client, cfg, run_id, "results/…/best_model", {"test_auroc": 0.98}, fingerprint)
    version.aliases  # ["champion"]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pneumo.config import ExperimentConfig, to_yaml
from pneumo.registry.aliases import alias_for
from pneumo.registry.card import checkpoint_meta, model_card
from pneumo.registry.pyfunc import MODEL_ARTIFACT, save_pyfunc_model
from pneumo.tracking import MAX_TAG_CHARS, TAG_CONFIG, TAG_DATA_FINGERPRINT, TAG_EXPERIMENT


def register_checkpoint(
    client: MlflowClient,
    cfg: ExperimentConfig,
    run_id: str,
    checkpoint_dir: str | Path,
    metrics: dict[str, float],
    fingerprint: str,
) -> ModelVersion:
    """Save `checkpoint_dir` as the pyfunc flavour, log it into `run_id` and register it; returns the
    ModelVersion with its alias."""
    with tempfile.TemporaryDirectory(prefix="pneumo-mlflow-model-") as folder:
        model_folder = save_pyfunc_model(checkpoint_dir, Path(folder) / MODEL_ARTIFACT)
        return register_model_folder(client, cfg, run_id, model_folder, metrics, fingerprint)


def register_model_folder(
    client: MlflowClient,
    cfg: ExperimentConfig,
    run_id: str,
    model_folder: str | Path,
    metrics: dict[str, float],
    fingerprint: str,
) -> ModelVersion:
    """Log a saved MLflow model folder into `run_id`, register it and set its alias."""
    client.log_artifacts(run_id, str(model_folder), MODEL_ARTIFACT)
    name = cfg.mlflow.registered_model_name
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    run = client.get_run(run_id)
    tags = {
        TAG_DATA_FINGERPRINT: fingerprint,
        TAG_EXPERIMENT: cfg.name,
        TAG_CONFIG: to_yaml(cfg)[:MAX_TAG_CHARS],
        # str() is the shortest exact form, so a champion compared by its tag ties with an equal rerun
        **{key: str(value) for key, value in metrics.items() if isinstance(value, (int, float))},
    }
    card = model_card(cfg, run.data.metrics, checkpoint_meta(model_folder), fingerprint)
    alias = alias_for(client, name, cfg.mlflow, metrics)  # decided before this version exists
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run_id, tags=tags, description=card
    )
    client.set_registered_model_alias(name, alias, version.version)
    return client.get_model_version(name, version.version)
