"""`pneumo eval MODEL DATA`: score any registered model, logged model or checkpoint folder on any
supported dataset, with the threshold and calibration stored in the model, and write its report.

The evaluation is logged as its own MLflow run (kind `eval`) with the metrics, their intervals and
the report, so a model's results on a new hospital's data sit next to its training runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from mlflow.tracking import MlflowClient

from pneumo.config import ConfigError, ExperimentConfig, flatten, to_dict
from pneumo.evaluation.evaluate import Evaluation, evaluate_predictions
from pneumo.evaluation.localization import Localization, localize_split
from pneumo.evaluation.prediction import predict_dataset
from pneumo.evaluation.report.build import write_evaluation_report
from pneumo.jobs.scoring import start_job
from pneumo.models.calibration import describe_calibration
from pneumo.models.runtimes import choose_runtime
from pneumo.monitoring.profile import gate_summary
from pneumo.registry.uri import FetchedModel
from pneumo.tracking import log_metrics, metric_history, training_run_for


@dataclass
class EvalOutcome:
    evaluation: Evaluation
    report_path: Optional[str]  # report.html, when eval.report
    mlflow_run_id: str  # the `eval` run
    ood: Optional[dict[str, float]] = None  # films the model's gate refuses (None: the model has no profile)
    localization: Optional[Localization] = None  # Grad-CAM vs drawn opacities (synthetic sets only)


def _training_run_id(client: MlflowClient, model: FetchedModel) -> Optional[str]:
    """The MLflow run that produced a registered or logged model; None for a bare checkpoint folder."""
    if model.uri.startswith("models:/"):
        return client.get_model_version(model.name, model.version).run_id
    if model.uri.startswith("runs:/"):
        return model.version  # fetch_model keeps the run id there for runs:/ URIs
    return None


def evaluate_model(
    model_uri: str,
    cfg: ExperimentConfig,
    split: str = "test",
    out_dir: Optional[str | Path] = None,
    runtime: str = "torch",
    int8: bool = False,
) -> EvalOutcome:
    """Score `model_uri` on `split` of cfg.data with `runtime` (torch, onnxruntime, openvino, auto: the
    one a replica would pick here); log an `eval` MLflow run and write the report."""
    job = start_job(model_uri, cfg)
    model, data, client = job.model, job.data, job.client
    meta = model.loaded.meta
    if sum(data.counts[split].values()) == 0:
        raise ConfigError(f"data.path {cfg.data.path}: the {split} split has no usable images")
    predictor = choose_runtime(runtime, model.loaded, torch.get_num_threads(), cfg.eval.batch_size, int8)
    scored = predict_dataset(model.loaded, data.datasets[split], cfg.eval.batch_size, predictor)
    val = (
        predict_dataset(model.loaded, data.datasets["val"], cfg.eval.batch_size, predictor) if split != "val" else None
    )
    evaluation = evaluate_predictions(
        val, scored, cfg.eval, threshold=meta.decision_threshold, calibration=meta.calibration
    )
    settings = flatten({"data": to_dict(cfg)["data"], "eval": to_dict(cfg)["eval"]})
    run_id = job.open_run(
        "eval",
        f"eval-{model.name}-{model.version}-{split}",
        {
            **settings,
            "split": split,
            "model_uri": model.uri,
            "runtime": predictor.runtime,
            "precision": predictor.precision,
        },
    )
    ood = gate_summary(model.loaded, data.datasets[split], cfg.eval.batch_size)
    localization = localize_split(model.loaded, data, split, cfg.data.path)  # synthetic sets only
    log_metrics(
        client,
        run_id,
        {**evaluation.logged_metrics(), **(ood or {}), **(localization.metrics() if localization else {})},
        prefix=f"{split}_",
    )
    report = None
    if cfg.eval.report:
        training_run = _training_run_id(client, model)
        history = metric_history(client, training_run_for(client, training_run)) if training_run else {}
        rows = {
            "model": model.uri,
            "architecture": meta.model["name"],
            "version": model.version,
            "evaluation MLflow run": run_id,
            "decision threshold": f"{meta.decision_threshold:.4f} (stored)",
            "calibration": describe_calibration(meta.calibration, "stored"),
        }
        report = write_evaluation_report(
            evaluation,
            cfg,
            data,
            split,
            rows,
            history,
            job.report_folder("eval", split, out_dir),
            title=f"{model.name} {model.version} on {cfg.data.path} ({split})",
            threshold_policy="",
            explain=model.loaded,
            localization=localization,
        )
    job.close_run(run_id, report.parent if report else None, "report")
    return EvalOutcome(evaluation, str(report) if report else None, run_id, ood, localization)
