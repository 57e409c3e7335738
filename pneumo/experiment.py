"""One experiment end to end: data -> train (or a Tune search) -> evaluate on test -> register -> report.

`run_experiment` is what `pneumo run` calls; it expects Ray to be initialised by the caller.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from mlflow.tracking import MlflowClient

from pneumo.calibration import describe_calibration
from pneumo.checkpoints import load_checkpoint, read_meta, write_meta
from pneumo.config import ConfigError, ExperimentConfig
from pneumo.cluster import check_shared_paths
from pneumo.data.dataset import PreparedData, ensure_dataset, prepare_data
from pneumo.data.transforms import Preprocessing
from pneumo.evaluate import Evaluation, evaluate_predictions, predict_dataset
from pneumo.metrics import format_metrics_table
from pneumo.models import create_model, resolve_preprocessing
from pneumo.report.build import write_evaluation_report
from pneumo.tracking import (TAG_BEST_CHECKPOINT, client_for, finish_run, log_and_register_model, log_metrics,
                             metric_history, open_run, resolve_tracking_uri, training_run_for)

logger = logging.getLogger(__name__)


@dataclass
class ExperimentOutcome:
    mlflow_run_id: str  # the training run, or the parent run of a search
    model_dir: str  # evaluated best checkpoint, with its decision threshold
    test_metrics: dict[str, float]
    results_path: str  # Ray's folder for this run or search
    model_version: Optional[Any] = None  # mlflow ModelVersion when registered
    report_path: Optional[str] = None  # report.html, when eval.report


def model_preprocessing(cfg: ExperimentConfig) -> Preprocessing:
    """The preprocessing of cfg.model, read off a weightless instance (no download)."""
    if cfg.model.weights_path and not Path(cfg.model.weights_path).is_file():
        raise ConfigError(f"model.weights_path: file not found: {cfg.model.weights_path}")
    bare = create_model(replace(cfg.model, pretrained=False, weights_path=None))
    return resolve_preprocessing(bare, cfg.model.in_chans, cfg.data.image_size)


def split_csv(rows: list[dict]) -> str:
    """The split pneumo assigned, as a manifest (path,label,patient_id,split) that reproduces it."""
    return pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"]).to_csv(index=False)


def log_data_summary(client: MlflowClient, run_id: str, data: PreparedData) -> None:
    client.set_tag(run_id, "data_fingerprint", data.fingerprint)
    counts = {f"data.{split}.{name}": n for split, per in data.counts.items() for name, n in per.items()}
    log_metrics(client, run_id, {**counts, "data.n_images": data.n_images, "data.skipped_files": len(data.skipped_files),
                                 "data.ignored_files": data.ignored_files})
    if data.skipped_files:
        client.log_dict(run_id, data.skipped_files, "data/skipped_files.json")
    if data.assigned_split:  # a valid manifest: point data.path at it to train on the same split again
        client.log_text(run_id, split_csv(data.assigned_split), "data/split.csv")


def evaluate_checkpoint(cfg: ExperimentConfig, data: PreparedData, checkpoint_dir: str, model_dir: Path) -> Evaluation:
    """Fit the calibration and pick the threshold on val, score test, and store both in a copy of the
    checkpoint at model_dir (what gets registered and served)."""
    shutil.copytree(checkpoint_dir, model_dir, dirs_exist_ok=True)
    (model_dir / "train_state.pt").unlink(missing_ok=True)  # serving needs weights only
    loaded = load_checkpoint(model_dir)
    val = predict_dataset(loaded, data.datasets["val"], cfg.eval.batch_size)
    test = predict_dataset(loaded, data.datasets["test"], cfg.eval.batch_size)
    evaluation = evaluate_predictions(val, test, cfg.eval)
    meta = read_meta(model_dir)
    meta.decision_threshold = evaluation.threshold
    meta.temperature, meta.logit_bias = evaluation.calibration.temperature, evaluation.calibration.bias
    meta.metrics = {**meta.metrics, **{f"test_{k}": v for k, v in evaluation.metrics.items()}}
    write_meta(model_dir, meta)
    return evaluation


def model_identity(cfg: ExperimentConfig, run_id: str, model_dir: Path, evaluation: Evaluation,
                   version: Optional[Any]) -> dict[str, str]:
    """The report's "Model" rows."""
    registered = (f"models:/{version.name}/{version.version} (aliases: {', '.join(version.aliases) or 'none'})"
                  if version is not None else "not registered (mlflow.register: false)")
    return {"architecture": cfg.model.name, "registered model": registered, "MLflow run": run_id,
            "checkpoint": str(model_dir),
            "decision threshold": f"{evaluation.threshold:.4f} ({cfg.eval.threshold_policy} policy on val)",
            "calibration": describe_calibration(evaluation.calibration, cfg.eval.calibration)}


def finalize(cfg: ExperimentConfig, data: PreparedData, client: MlflowClient, run_id: str,
             checkpoint_dir: str, results_path: str) -> ExperimentOutcome:
    """Evaluate the best checkpoint, log test metrics, register the model, write the report, print the summary."""
    model_dir = Path(results_path) / "best_model"
    if data.assigned_split:
        (Path(results_path) / "split.csv").write_text(split_csv(data.assigned_split))
    evaluation = evaluate_checkpoint(cfg, data, checkpoint_dir, model_dir)
    client.set_tag(run_id, TAG_BEST_CHECKPOINT, checkpoint_dir)
    test_metrics = evaluation.metrics
    log_metrics(client, run_id, evaluation.logged_metrics(), prefix="test_")
    client.log_artifacts(run_id, str(model_dir), "best_checkpoint")
    version = None
    if cfg.mlflow.register:
        version = log_and_register_model(cfg, run_id, model_dir, {f"test_{k}": v for k, v in test_metrics.items()},
                                         data.fingerprint)
    report = None
    if cfg.eval.report:
        history = metric_history(client, training_run_for(client, run_id))
        report = write_evaluation_report(evaluation, cfg, data, "test",
                                         model_identity(cfg, run_id, model_dir, evaluation, version), history,
                                         Path(results_path) / "report")
        client.log_artifacts(run_id, str(report.parent), "report")
    print(format_metrics_table(test_metrics, evaluation.intervals), flush=True)
    return ExperimentOutcome(run_id, str(model_dir), test_metrics, results_path, version,
                             str(report) if report else None)


def run_experiment(cfg: ExperimentConfig, resume: bool = False) -> ExperimentOutcome:
    """Train once, or search when tune.num_samples > 0; then evaluate and register the best model."""
    client = client_for(cfg)
    preprocessing = model_preprocessing(cfg)
    ensure_dataset(cfg.data)
    check_shared_paths(cfg)
    data = prepare_data(cfg.data, preprocessing, cfg.serve.max_image_pixels)
    logger.info("data: %s, fingerprint %s", data.counts, data.fingerprint[:12])
    if cfg.tune.num_samples > 0:
        from pneumo.tune import search

        run_id, found = search(cfg, data, preprocessing, client, resume)
        log_data_summary(client, run_id, data)
        checkpoint_dir, results_path = found.best_checkpoint, found.results_path
    else:
        from pneumo.train import fit

        run_id, ray_run_name = open_run(client, cfg, "train", resume)
        log_data_summary(client, run_id, data)
        try:
            trained = fit(cfg, data, preprocessing, ray_run_name, resolve_tracking_uri(cfg.mlflow), run_id)
        except BaseException:
            finish_run(client, run_id, failed=True)
            raise
        checkpoint_dir, results_path = trained.best_checkpoint, trained.results_path
    outcome = finalize(cfg, data, client, run_id, checkpoint_dir, results_path)
    finish_run(client, run_id)
    return outcome
