"""Scoring a model on prepared splits: predictions, calibration and threshold fitted on validation,
test metrics with bootstrap intervals, every operating point, and the most confident mistakes.

Used at the end of every run (experiment.finalize) and by `pneumo eval` (eval_run.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from pneumo.calibration import Calibration, ReliabilityBins, expected_calibration_error, fit_calibration, reliability_bins
from pneumo.checkpoints import LoadedModel
from pneumo.config import EvalConfig
from pneumo.data.batch_transforms import normalize
from pneumo.data.transforms import Preprocessing
from pneumo.metrics import OperatingPoint, binary_metrics, bootstrap_intervals, choose_threshold, operating_points

if TYPE_CHECKING:
    import ray.data


@dataclass
class Predictions:
    labels: np.ndarray  # 0/1 ground truth
    logits: np.ndarray  # raw model outputs, before calibration
    paths: list[str]  # where each image came from


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 (N, C, H, W) images -> one logit each."""
    return model(normalize(images, preprocessing)).float().squeeze(1).cpu().numpy()


def predict_probabilities(loaded: LoadedModel, images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) images -> P(pneumonia), with the calibration stored in the checkpoint."""
    return loaded.meta.calibration.probabilities(predict_logits(loaded.model, images, loaded.meta.preprocessing_spec))


def predict_dataset(loaded: LoadedModel, dataset: "ray.data.Dataset", batch_size: int = 64) -> Predictions:
    """Score every row of a prepared split (columns image, label, path) in this process."""
    preprocessing = loaded.meta.preprocessing_spec
    labels, logits, paths = [], [], []
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        logits.append(predict_logits(loaded.model, torch.as_tensor(np.array(batch["image"])), preprocessing))
        labels.append(batch["label"])
        paths.extend(str(p) for p in batch["path"])
    if not labels:
        return Predictions(np.zeros(0, int), np.zeros(0, np.float32), [])
    return Predictions(np.concatenate(labels).astype(int), np.concatenate(logits), paths)


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

    def logged_metrics(self) -> dict[str, float]:
        """The metrics plus each interval as <metric>_ci_low / <metric>_ci_high: how MLflow holds them."""
        bounds = {f"{key}_ci_{end}": value for key, (low, high) in self.intervals.items()
                  for end, value in (("low", low), ("high", high))}
        return {**self.metrics, **bounds}


def evaluate_predictions(val: Optional[Predictions], test: Predictions, cfg: EvalConfig,
                         threshold: Optional[float] = None, calibration: Optional[Calibration] = None) -> Evaluation:
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
    metrics["ece_uncalibrated"] = expected_calibration_error(test.labels, Calibration().probabilities(test.logits),
                                                             cfg.calibration_bins)
    intervals = (bootstrap_intervals(test.labels, probabilities, threshold, cfg.bootstrap_samples,
                                     cfg.confidence_level, seed=0) if cfg.bootstrap_samples else {})
    points = (operating_points(val.labels, val_probabilities, test.labels, probabilities, cfg)
              if val is not None and len(val.labels) else [])
    return Evaluation(threshold, calibration, metrics, intervals, points, reliability, test, probabilities)


def confident_mistakes(labels: np.ndarray, probabilities: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices of wrong predictions: false negatives first (missed pneumonia), each group most confident first."""
    missed = np.flatnonzero((labels == 1) & (probabilities < threshold))
    false_alarms = np.flatnonzero((labels == 0) & (probabilities >= threshold))
    ordered = np.concatenate([missed[np.argsort(probabilities[missed], kind="stable")],
                              false_alarms[np.argsort(-probabilities[false_alarms], kind="stable")]])
    return ordered[:limit].astype(int)


def images_at(dataset: "ray.data.Dataset", paths: list[str]) -> dict[str, np.ndarray]:
    """The decoded images of a prepared (materialized) split whose path is in `paths`: its blocks are
    read where they lie, with no Ray Data task to schedule (a filter took ~2 s on the quickstart)."""
    wanted, found = set(paths), {}
    if wanted:
        for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            found.update({str(path): np.asarray(image) for path, image in zip(block["path"], block["image"])
                          if path in wanted})
    return found
