"""Any model by URI: a checkpoint folder, models:/NAME@alias, models:/NAME/VERSION or runs:/ID/model,
loaded with its identity (name, version, registered metrics). Serving and `pneumo eval` both load here.

    resolve_model_uri(None, cfg.serve, cfg.mlflow)  # -> "models:/pneumo-pneumonia@champion"
    fetch_model("models:/pneumo-pneumonia@champion", tracking_uri).loaded.model

Weights always come from a pneumo checkpoint folder through `load_checkpoint` (safetensors, no
pickle), also for MLflow models: their checkpoint folder is downloaded, never `pyfunc.load_model`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from pneumo.config import ConfigError, MlflowConfig, ServeConfig
from pneumo.models.checkpoints import LoadedModel, load_checkpoint
from pneumo.paths import is_uri
from pneumo.registry.aliases import CHAMPION
from pneumo.registry.pyfunc import CHECKPOINT_ARTIFACT
from pneumo.tracking import TAG_CONFIG, TAG_DATA_FINGERPRINT, TAG_EXPERIMENT

MODEL_URI_ENV = "PNEUMO_MODEL_URI"
MLFLOW_SCHEMES = ("models:/", "runs:/")
NOT_METRIC_TAGS = {TAG_CONFIG, TAG_DATA_FINGERPRINT, TAG_EXPERIMENT}  # registry tags that are not metrics


def resolve_model_uri(
    explicit: Optional[str], serve_cfg: ServeConfig, mlflow_cfg: MlflowConfig, environ: Mapping[str, str] = os.environ
) -> str:
    """explicit > $PNEUMO_MODEL_URI > serve.model_uri > models:/<mlflow.registered_model_name>@champion.

    `models:/…` and `runs:/…` stay URIs; anything else is a checkpoint folder, returned absolute.
    """
    uri = (
        explicit
        or environ.get(MODEL_URI_ENV)
        or serve_cfg.model_uri
        or f"models:/{mlflow_cfg.registered_model_name}@{CHAMPION}"
    )
    if uri.startswith(MLFLOW_SCHEMES):
        return uri
    if is_uri(uri):
        raise ConfigError(f"model {uri!r}: only models:/…, runs:/… or a local checkpoint folder can be served")
    folder = Path(uri).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(
            f"model {uri!r}: no such checkpoint folder (give a folder with pneumo.json and "
            f"model.safetensors, models:/NAME@alias, models:/NAME/VERSION or runs:/RUN_ID/model)"
        )
    return str(folder)


def download_model_checkpoint(model_uri: str, tracking_uri: str, destination: Optional[str] = None) -> Path:
    """Local folder holding the pneumo checkpoint inside a logged or registered model
    (`models:/NAME/VERSION`, `runs:/ID/model`).

    A registered version is resolved to its artifact location through this tracking URI first:
    MLflow's own models:/ download asks the process-global registry, which may be another store.
    """
    if model_uri.startswith("models:/"):
        name, _, version = model_uri.removeprefix("models:/").rpartition("/")
        model_uri = MlflowClient(tracking_uri).get_model_version_download_uri(name, version)
    destination = destination or tempfile.mkdtemp(prefix="pneumo-model-")
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=destination, tracking_uri=tracking_uri)
    # MLflow keeps the logged folder's own name (e.g. artifacts/best_model); the MLmodel file says which
    artifacts = mlflow.models.Model.load(local).flavors["python_function"]["artifacts"]
    return Path(local) / artifacts[CHECKPOINT_ARTIFACT]["path"]


@dataclass
class FetchedModel:
    loaded: LoadedModel
    uri: str  # where it came from; an alias is pinned to the version it pointed at
    name: str  # registry name, else the timm architecture (runs) or folder name (checkpoints)
    version: str  # registry version, run id, or "local"
    metrics: dict[str, float]  # registered with the version, else recorded in the checkpoint

    def describe(self) -> dict[str, Any]:
        meta = self.loaded.meta
        return {
            "name": self.name,
            "version": self.version,
            "uri": self.uri,
            "architecture": meta.model["name"],
            "metrics": self.metrics,
            "preprocessing": meta.preprocessing_spec.to_dict(),
            "decision_threshold": meta.decision_threshold,
            "temperature": meta.temperature,
            "logit_bias": meta.logit_bias,
        }


def _numeric_tags(tags: dict[str, str]) -> dict[str, float]:
    """The metrics among a version's tags (register_model_folder writes each metric as a tag)."""
    metrics = {}
    for key, value in tags.items():
        try:
            if key not in NOT_METRIC_TAGS:
                metrics[key] = float(value)
        except ValueError:
            continue
    return metrics


def _registry_version(client: MlflowClient, uri: str):
    """models:/NAME@ALIAS or models:/NAME/VERSION -> the MLflow ModelVersion."""
    reference = uri.removeprefix("models:/")
    if "@" not in reference:
        name, _, version = reference.rpartition("/")
        return client.get_model_version(name, version)
    name, alias = reference.split("@", 1)
    aliases = client.get_registered_model(name).aliases
    if alias not in aliases:  # MLflow calls this an invalid parameter; here it means "not promoted yet"
        raise MlflowException(
            f"registered model {name!r} has no @{alias} version yet", error_code=RESOURCE_DOES_NOT_EXIST
        )
    return client.get_model_version(name, aliases[alias])


def current_version(uri: str, tracking_uri: str) -> str | None:
    """The registry version a models:/NAME@ALIAS URI points at now; None for URIs that cannot move."""
    if not uri.startswith("models:/") or "@" not in uri:
        return None
    return str(_registry_version(MlflowClient(tracking_uri), uri).version)


def fetch_model(uri: str, tracking_uri: str) -> FetchedModel:
    """Download (for MLflow URIs) and load the checkpoint that `uri` names."""
    if uri.startswith("models:/"):
        version = _registry_version(MlflowClient(tracking_uri), uri)
        pinned = f"models:/{version.name}/{version.version}"  # the alias may move while we download
        loaded = load_checkpoint(download_model_checkpoint(pinned, tracking_uri))
        return FetchedModel(loaded, pinned, version.name, str(version.version), _numeric_tags(version.tags))
    if uri.startswith("runs:/"):
        loaded = load_checkpoint(download_model_checkpoint(uri, tracking_uri))
        run_id = uri.removeprefix("runs:/").split("/")[0]
        return FetchedModel(loaded, uri, loaded.meta.model["name"], run_id, dict(loaded.meta.metrics))
    loaded = load_checkpoint(uri)
    return FetchedModel(loaded, uri, Path(uri).name, "local", dict(loaded.meta.metrics))
