"""The skeleton of a scoring job: fetch the model, prepare the data with the model's own
preprocessing, open an MLflow run that names both, and write the report into a durable folder.

    job = start_job(model_uri, cfg)                       # model, data, client
    run_id = job.open_run("eval", "eval-…", params)       # tagged with the model URI and data fingerprint
    folder = job.report_folder("eval", "test", out_dir)   # reports/<model>-<version>-eval-test-<time>
    job.close_run(run_id, folder, "report")               # the folder logged as the run's artifacts
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mlflow.tracking import MlflowClient

from pneumo.config import ExperimentConfig
from pneumo.data.dataset import PreparedData, prepare_data
from pneumo.paths import durable_path
from pneumo.registry.uri import FetchedModel, fetch_model
from pneumo.tracking import (
    TAG_DATA_FINGERPRINT,
    TAG_MODEL_URI,
    finish_run,
    log_dataset_input,
    resolve_tracking_uri,
    start_run,
)

REPORTS = "reports"  # default parent of every job's report folder, made durable (paths.py)


def default_report_dir(model: FetchedModel, kind: str, split: str) -> Path:
    """reports/<model>-<version>-<kind>-<split>-<time>, outside a Ray job's temporary package."""
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name)
    return Path(durable_path(REPORTS)) / f"{safe_name}-{model.version}-{kind}-{split}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class ScoringJob:
    cfg: ExperimentConfig
    client: MlflowClient
    model: FetchedModel
    data: Optional[PreparedData]  # None for jobs that read their inputs themselves (predict)

    def open_run(self, kind: str, run_name: str, params: dict[str, Any]) -> str:
        """An MLflow run of `kind`, tagged with the model's URI and the data's fingerprint."""
        tags = {TAG_MODEL_URI: self.model.uri}
        if self.data is not None:
            tags[TAG_DATA_FINGERPRINT] = self.data.fingerprint
        run_id = start_run(self.client, self.cfg, kind, run_name, tags=tags, params=params)
        if self.data is not None:  # the data it scored, in the UI's Datasets column
            context = {"eval": "evaluation", "monitor": "monitoring"}.get(kind, kind)
            log_dataset_input(self.client, run_id, self.data, self.cfg.data.path, context)
        return run_id

    def report_folder(self, kind: str, split: str, out_dir: Optional[str | Path] = None) -> Path:
        folder = Path(out_dir) if out_dir else default_report_dir(self.model, kind, split)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def close_run(self, run_id: str, folder: Optional[Path], artifact_path: str) -> None:
        """Log `folder` (when there is one) as the run's `artifact_path` and finish the run."""
        if folder is not None:
            self.client.log_artifacts(run_id, str(folder), artifact_path)
        finish_run(self.client, run_id)


def start_job(model_uri: str, cfg: ExperimentConfig, prepare: bool = True) -> ScoringJob:
    """Fetch `model_uri` through cfg's tracking store and prepare cfg.data with the model's preprocessing."""
    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    model = fetch_model(model_uri, tracking_uri)
    data = prepare_data(cfg.data, model.loaded.meta.preprocessing_spec) if prepare else None
    return ScoringJob(cfg, MlflowClient(tracking_uri), model, data)
