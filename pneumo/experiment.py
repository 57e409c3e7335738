"""`pneumo run`: data -> train (or a Tune search) -> evaluate on test -> register -> report.

`run_experiment` is the pipeline and nothing else; each step lives in its own module. It expects Ray
to be initialised by the caller.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mlflow.tracking import MlflowClient

from pneumo.cluster import check_shared_paths
from pneumo.config import ExperimentConfig
from pneumo.data.dataset import PreparedData, ensure_dataset, prepare_data
from pneumo.data.split import split_csv
from pneumo.evaluation.evaluate import evaluate_model_folder
from pneumo.evaluation.localization import localize_split
from pneumo.evaluation.metrics import format_metrics_table
from pneumo.evaluation.report.build import training_model_rows, write_evaluation_report
from pneumo.models.checkpoints import copy_for_serving, load_checkpoint
from pneumo.models.networks import model_preprocessing
from pneumo.monitoring.profile import profile_checkpoint
from pneumo.registry.export import export_model_folder
from pneumo.registry.register import register_checkpoint
from pneumo.tracking import (
    TAG_BEST_CHECKPOINT,
    check_tracking_access,
    client_for,
    finish_run,
    log_data_summary,
    log_metrics,
    metric_history,
    open_run,
    resolve_tracking_uri,
    training_run_for,
)
from pneumo.training.events import LoggedEvents, RunEvents

logger = logging.getLogger(__name__)


@dataclass
class ExperimentOutcome:
    mlflow_run_id: str  # the training run, or the parent run of a search
    model_dir: str  # evaluated best checkpoint, with its decision threshold
    test_metrics: dict[str, float]
    results_path: str  # Ray's folder for this run or search
    model_version: Optional[Any] = None  # mlflow ModelVersion when registered
    report_path: Optional[str] = None  # report.html, when eval.report


def finalize(
    cfg: ExperimentConfig,
    data: PreparedData,
    client: MlflowClient,
    run_id: str,
    checkpoint_dir: str,
    results_path: str,
    progress: RunEvents,
) -> ExperimentOutcome:
    """Evaluate the best checkpoint, export it, log test metrics, register the model, write the report,
    print the summary."""
    if data.assigned_split:
        (Path(results_path) / "split.csv").write_text(split_csv(data.assigned_split))
    model_dir = copy_for_serving(checkpoint_dir, Path(results_path) / "best_model")
    evaluation = evaluate_model_folder(cfg, data, model_dir)
    progress.phase("evaluated")
    export_model_folder(model_dir, data, cfg, evaluation.val)  # raises when an export does not match
    progress.phase("exported")
    profile_checkpoint(model_dir, data, cfg.eval.batch_size)  # the monitoring reference, registered with it
    progress.phase("profiled")
    client.set_tag(run_id, TAG_BEST_CHECKPOINT, checkpoint_dir)
    test_metrics = evaluation.metrics
    explained = load_checkpoint(model_dir)  # Grad-CAM maps in the report; localization on a synthetic set
    localization = localize_split(explained, data, "test", cfg.data.path)
    progress.phase("localized")
    log_metrics(
        client,
        run_id,
        {**evaluation.logged_metrics(), **(localization.metrics() if localization else {})},
        prefix="test_",
    )
    client.log_artifacts(run_id, str(model_dir), "best_checkpoint")
    version = None
    if cfg.mlflow.register:
        version = register_checkpoint(
            client, cfg, run_id, model_dir, {f"test_{k}": v for k, v in test_metrics.items()}, data.fingerprint
        )
    progress.phase("registered")
    report = None
    if cfg.eval.report:
        history = metric_history(client, training_run_for(client, run_id))
        report = write_evaluation_report(
            evaluation,
            cfg,
            data,
            "test",
            training_model_rows(cfg, run_id, model_dir, evaluation, version),
            history,
            Path(results_path) / "report",
            explain=explained,
            localization=localization,
        )
        client.log_artifacts(run_id, str(report.parent), "report")
        progress.phase("report_written")
    progress.note(format_metrics_table(test_metrics, evaluation.intervals))
    return ExperimentOutcome(
        run_id, str(model_dir), test_metrics, results_path, version, str(report) if report else None
    )


def run_experiment(
    cfg: ExperimentConfig, resume: bool = False, progress: Optional[RunEvents] = None
) -> ExperimentOutcome:
    """Train once, or search when tune.num_samples > 0; then evaluate and register the best model.
    `progress` receives the run's events (default: log lines)."""
    progress = progress or LoggedEvents()
    check_tracking_access(cfg)  # a refused login or permission fails here, not after training
    client = client_for(cfg)
    preprocessing = model_preprocessing(cfg.model, cfg.data.image_size)
    ensure_dataset(cfg.data)
    check_shared_paths(cfg)
    progress.phase("data_listed")
    data = prepare_data(cfg.data, preprocessing)
    progress.phase("data_prepared")
    logger.info("data: %s, fingerprint %s", data.counts, data.fingerprint[:12])
    if cfg.tune.num_samples > 0:
        from pneumo.training.tune import search

        run_id, found = search(cfg, data, preprocessing, client, resume, progress)
        log_data_summary(client, run_id, data, source=cfg.data.path)
        checkpoint_dir, results_path = found.best_checkpoint, found.results_path
    else:
        from pneumo.training.train import fit

        run_id, ray_run_name = open_run(client, cfg, "train", resume)
        log_data_summary(client, run_id, data, source=cfg.data.path)
        progress.phase("mlflow_run_opened")
        try:
            trained = fit(cfg, data, preprocessing, ray_run_name, resolve_tracking_uri(cfg.mlflow), run_id, progress)
        except BaseException:
            finish_run(client, run_id, failed=True)
            raise
        checkpoint_dir, results_path = trained.best_checkpoint, trained.results_path
    progress.phase("training_returned")
    progress.stop()  # the final table of trials; evaluation follows
    outcome = finalize(cfg, data, client, run_id, checkpoint_dir, results_path, progress)
    finish_run(client, run_id)
    progress.phase("run_finished")
    return outcome
