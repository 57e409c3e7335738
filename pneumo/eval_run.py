"""`pneumo eval MODEL DATA`: score any registered model, logged model or checkpoint folder on any
supported dataset, with the threshold and calibration stored in the model, and write its report.

The evaluation is logged as its own MLflow run (kind `eval`) with the metrics, their intervals and
the report, so a model's results on a new hospital's data sit next to its training runs.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from pneumo.calibration import describe_calibration
from pneumo.config import ConfigError, ExperimentConfig, flatten, to_dict
from pneumo.data.dataset import prepare_data
from pneumo.evaluate import Evaluation, evaluate_predictions, predict_dataset
from pneumo.report.build import write_evaluation_report
from pneumo.serve_model import ServedModel, fetch_model
from pneumo.tracking import (TAG_EXPERIMENT, TAG_KIND, ensure_experiment, finish_run, log_metrics, metric_history,
                             resolve_tracking_uri, training_run_for)

TAG_MODEL_URI = "pneumo.model_uri"


@dataclass
class EvalOutcome:
    evaluation: Evaluation
    report_path: Optional[str]  # report.html, when eval.report
    mlflow_run_id: str  # the `eval` run


def _training_run_id(client: MlflowClient, model: ServedModel) -> Optional[str]:
    """The MLflow run that produced a registered or logged model; None for a bare checkpoint folder."""
    if model.uri.startswith("models:/"):
        return client.get_model_version(model.name, model.version).run_id
    if model.uri.startswith("runs:/"):
        return model.version  # fetch_model keeps the run id there for runs:/ URIs
    return None


def _start_eval_run(client: MlflowClient, cfg: ExperimentConfig, model: ServedModel, split: str) -> str:
    """An MLflow run for this evaluation, with the data and eval settings as params."""
    experiment_id = ensure_experiment(client, cfg.mlflow.experiment_name)
    run = client.create_run(experiment_id, run_name=f"eval-{model.name}-{model.version}-{split}",
                            tags={TAG_EXPERIMENT: cfg.name, TAG_KIND: "eval", TAG_MODEL_URI: model.uri})
    settings = flatten({"data": to_dict(cfg)["data"], "eval": to_dict(cfg)["eval"]})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in settings.items()]
                     + [Param("split", split), Param("model_uri", model.uri)])
    return run.info.run_id


def default_report_dir(model: ServedModel, split: str) -> Path:
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name)
    return Path("reports") / f"{safe_name}-{model.version}-{split}-{time.strftime('%Y%m%d-%H%M%S')}"


def evaluate_model(model_uri: str, cfg: ExperimentConfig, split: str = "test",
                   out_dir: Optional[str | Path] = None) -> EvalOutcome:
    """Score `model_uri` on `split` of cfg.data; log an `eval` MLflow run and write the report."""
    tracking_uri = resolve_tracking_uri(cfg.mlflow)
    client = MlflowClient(tracking_uri)
    model = fetch_model(model_uri, tracking_uri)
    meta = model.loaded.meta
    data = prepare_data(cfg.data, meta.preprocessing_spec, cfg.serve.max_image_pixels)
    if sum(data.counts[split].values()) == 0:
        raise ConfigError(f"data.path {cfg.data.path}: the {split} split has no usable images")
    scored = predict_dataset(model.loaded, data.datasets[split], cfg.eval.batch_size)
    val = predict_dataset(model.loaded, data.datasets["val"], cfg.eval.batch_size) if split != "val" else None
    evaluation = evaluate_predictions(val, scored, cfg.eval, threshold=meta.decision_threshold,
                                      calibration=meta.calibration)
    run_id = _start_eval_run(client, cfg, model, split)
    client.set_tag(run_id, "data_fingerprint", data.fingerprint)
    log_metrics(client, run_id, evaluation.logged_metrics(), prefix=f"{split}_")
    report = None
    if cfg.eval.report:
        training_run = _training_run_id(client, model)
        history = metric_history(client, training_run_for(client, training_run)) if training_run else {}
        rows = {"model": model.uri, "architecture": meta.model["name"], "version": model.version,
                "evaluation MLflow run": run_id, "decision threshold": f"{meta.decision_threshold:.4f} (stored)",
                "calibration": describe_calibration(meta.calibration, "stored")}
        report = write_evaluation_report(evaluation, cfg, data, split, rows, history,
                                         out_dir or default_report_dir(model, split),
                                         title=f"{model.name} {model.version} on {cfg.data.path} ({split})",
                                         threshold_policy="")
        client.log_artifacts(run_id, str(report.parent), "report")
    finish_run(client, run_id)
    return EvalOutcome(evaluation, str(report) if report else None, run_id)
