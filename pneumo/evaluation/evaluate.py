"""Scores from predictions: calibration and threshold fitted on validation, test metrics with
bootstrap intervals, every operating point, the most confident mistakes; and the end-of-run
evaluation of a model folder, which stores the fitted threshold and calibration in it.

Used at the end of every run (experiment.py) and by `pneumo eval` (jobs/evaluate.py). Exporting the
evaluated model to compiled runtimes is registry/export.py's step, not this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pneumo.config import EvalConfig, ExperimentConfig
from pneumo.data.dataset import PreparedData
from pneumo.evaluation.metrics import (
    OperatingPoint,
    binary_metrics,
    bootstrap_intervals,
    choose_threshold,
    operating_points,
)
from pneumo.evaluation.prediction import Predictions, predict_dataset
from pneumo.models.calibration import (
    Calibration,
    ReliabilityBins,
    expected_calibration_error,
    fit_calibration,
    reliability_bins,
)
from pneumo.models.checkpoints import load_checkpoint, read_meta, write_meta


@dataclass
class Evaluation:
    threshold: float  # decision threshold on calibrated P(pneumonia)
    calibration: Calibration  # fitted on val or stored with the model
    metrics: dict[str, float]  # test binary_metrics plus ece and ece_uncalibrated
    intervals: dict[str, tuple[float, float]]  # bootstrap interval per score (empty when disabled)
    operating_points: list[OperatingPoint]  # every threshold policy (empty without validation)
    reliability: ReliabilityBins  # test, after calibration
    test: Predictions
    test_probabilities: np.ndarray  # calibrated
    val: Optional[Predictions] = None  # what the threshold and calibration were fitted on

    def logged_metrics(self) -> dict[str, float]:
        """The metrics plus each interval as <metric>_ci_low / <metric>_ci_high: how MLflow holds them."""
        bounds = {
            f"{key}_ci_{end}": value
            for key, (low, high) in self.intervals.items()
            for end, value in (("low", low), ("high", high))
        }
        return {**self.metrics, **bounds}


def evaluate_predictions(
    val: Optional[Predictions],
    test: Predictions,
    cfg: EvalConfig,
    threshold: Optional[float] = None,
    calibration: Optional[Calibration] = None,
) -> Evaluation:
    """Fit the calibration and choose the threshold on `val` (unless given), then score `test`."""
    if val is None and (threshold is None or calibration is None):
        raise ValueError("choosing a threshold or a calibration needs validation predictions")
    if calibration is None:
        calibration = fit_calibration(val.labels, val.logits, cfg.calibration)
    val_probabilities = calibration.probabilities(val.logits) if val is not None else None
    if threshold is None:
        threshold = choose_threshold(val.labels, val_probabilities, cfg)
    probabilities = calibration.probabilities(test.logits)
    metrics = binary_metrics(test.labels, probabilities, threshold)
    reliability = reliability_bins(test.labels, probabilities, cfg.calibration_bins)
    metrics["ece"] = reliability.expected_calibration_error
    metrics["ece_uncalibrated"] = expected_calibration_error(
        test.labels, Calibration().probabilities(test.logits), cfg.calibration_bins
    )
    intervals = (
        bootstrap_intervals(test.labels, probabilities, threshold, cfg.bootstrap_samples, cfg.confidence_level, seed=0)
        if cfg.bootstrap_samples
        else {}
    )
    points = (
        operating_points(val.labels, val_probabilities, test.labels, probabilities, cfg)
        if val is not None and len(val.labels)
        else []
    )
    return Evaluation(threshold, calibration, metrics, intervals, points, reliability, test, probabilities, val)


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices of wrong predictions: false negatives first (missed pneumonia), each group most confident first."""
    missed = np.flatnonzero((labels == 1) & (probabilities < threshold))
    false_alarms = np.flatnonzero((labels == 0) & (probabilities >= threshold))
    ordered = np.concatenate(
        [
            missed[np.argsort(probabilities[missed], kind="stable")],
            false_alarms[np.argsort(-probabilities[false_alarms], kind="stable")],
        ]
    )
    return ordered[:limit].astype(int)


def evaluate_model_folder(cfg: ExperimentConfig, data: PreparedData, model_dir: Path) -> Evaluation:
    """Fit the calibration and pick the threshold on val, score test, and store threshold, calibration
    and test metrics in model_dir's pneumo.json (what gets registered and served)."""
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
