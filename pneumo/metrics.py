"""Binary classification metrics (scikit-learn), bootstrap confidence intervals and threshold policies.

Accuracy alone misleads at 3 pneumonia : 1 normal, so every result carries AUROC, sensitivity and
specificity at a threshold that a configured policy picks on the validation split, each with a 95%
bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix,
                             f1_score, precision_score, recall_score, roc_auc_score, roc_curve)

from pneumo.config import EvalConfig

SCORES = ("auroc", "auprc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1")
POLICIES = ("fixed", "youden", "sensitivity", "specificity")


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC/AUPRC over all thresholds; the rest at `threshold` (probability >= threshold: pneumonia)."""
    labels = np.asarray(labels).astype(int)
    predicted = (np.asarray(probabilities) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    nan = float("nan")
    return {
        "auroc": float(roc_auc_score(labels, probabilities)) if both_classes else nan,
        "auprc": float(average_precision_score(labels, probabilities)) if both_classes else nan,
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)) if both_classes else nan,
        "sensitivity": float(recall_score(labels, predicted, pos_label=1, zero_division=np.nan)),
        "specificity": float(recall_score(labels, predicted, pos_label=0, zero_division=np.nan)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "threshold": float(threshold),
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
    }


def _confusion_scores(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """The SCORES from scikit-learn's confusion matrix and ranking scores: binary_metrics without the
    per-call validation of six more scorers, cheap enough to repeat a thousand times."""
    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = tp + fn > 0 and tn + fp > 0
    sensitivity = tp / (tp + fn) if tp + fn else np.nan
    specificity = tn / (tn + fp) if tn + fp else np.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    return {"auroc": roc_auc_score(labels, probabilities) if both_classes else np.nan,
            "auprc": average_precision_score(labels, probabilities) if both_classes else np.nan,
            "accuracy": (tp + tn) / len(labels), "balanced_accuracy": (sensitivity + specificity) / 2,
            "sensitivity": sensitivity, "specificity": specificity, "precision": precision,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0}


def bootstrap_intervals(labels: np.ndarray, probabilities: np.ndarray, threshold: float, n_resamples: int = 1000,
                        confidence: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each score in SCORES: images resampled with replacement,
    the threshold held fixed (it was chosen on validation, not on these images). ~3 ms a resample."""
    rng = np.random.default_rng(seed)
    labels, probabilities = np.asarray(labels).astype(int), np.asarray(probabilities)
    draws = {key: np.empty(n_resamples) for key in SCORES}
    for i in range(n_resamples):
        sample = rng.integers(0, len(labels), len(labels))
        scores = _confusion_scores(labels[sample], probabilities[sample], threshold)
        for key in SCORES:
            draws[key][i] = scores[key]
    tail = 100 * (1 - confidence) / 2
    return {key: (float(np.nanpercentile(values, tail)), float(np.nanpercentile(values, 100 - tail)))
            for key, values in draws.items() if not np.isnan(values).all()}


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, cfg: EvalConfig, policy: str = "") -> float:
    """The decision threshold that `policy` (default cfg.threshold_policy) picks on these (validation) predictions.

    youden: maximises sensitivity + specificity - 1; sensitivity/specificity: the threshold that keeps
    that rate at or above its target with the best value of the other; fixed: cfg.threshold.
    """
    policy = policy or cfg.threshold_policy
    if policy == "fixed" or len(np.unique(labels)) < 2:
        return cfg.threshold
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if policy == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    if policy == "sensitivity":
        ok = np.flatnonzero(tpr >= cfg.target_sensitivity)
        return float(thresholds[ok[np.argmin(fpr[ok])]])
    ok = np.flatnonzero(1 - fpr >= cfg.target_specificity)
    return float(thresholds[ok[np.argmax(tpr[ok])]])


@dataclass
class OperatingPoint:
    policy: str  # fixed | youden | sensitivity | specificity
    description: str  # what the policy aims at, e.g. "sensitivity >= 0.95 on val"
    threshold: float  # chosen on validation
    val: dict[str, float]  # binary_metrics on validation at that threshold
    test: dict[str, float]  # binary_metrics on test at that threshold


def policy_description(policy: str, cfg: EvalConfig) -> str:
    return {"fixed": f"fixed threshold {cfg.threshold:g}",
            "youden": "max sensitivity + specificity (Youden's J) on val",
            "sensitivity": f"sensitivity >= {cfg.target_sensitivity:g} on val (screening)",
            "specificity": f"specificity >= {cfg.target_specificity:g} on val"}[policy]


def operating_points(val_labels: np.ndarray, val_probabilities: np.ndarray, test_labels: np.ndarray,
                     test_probabilities: np.ndarray, cfg: EvalConfig) -> list[OperatingPoint]:
    """Every threshold policy, chosen on validation and applied to test: the table a clinical team
    reads to pick an operating point."""
    points = []
    for policy in POLICIES:
        threshold = choose_threshold(val_labels, val_probabilities, cfg, policy)
        points.append(OperatingPoint(policy, policy_description(policy, cfg), threshold,
                                     binary_metrics(val_labels, val_probabilities, threshold),
                                     binary_metrics(test_labels, test_probabilities, threshold)))
    return points


def format_metrics_table(metrics: dict[str, float], intervals: dict[str, tuple[float, float]] | None = None,
                         title: str = "test") -> str:
    """A small fixed-width table for the end of a run, with confidence intervals when given."""
    intervals = intervals or {}
    rows = [f"{title} metrics (n={metrics['tp'] + metrics['fp'] + metrics['tn'] + metrics['fn']}, "
            f"threshold {metrics['threshold']:.3f})"]
    for key in SCORES:
        low_high = f"  [{intervals[key][0]:.3f}, {intervals[key][1]:.3f}]" if key in intervals else ""
        rows.append(f"  {key:<18} {metrics[key]:.4f}{low_high}")
    if "ece" in metrics:
        rows.append(f"  {'ece':<18} {metrics['ece']:.4f}")
    rows.append(f"  confusion           TP {metrics['tp']}  FN {metrics['fn']}  TN {metrics['tn']}  FP {metrics['fp']}")
    return "\n".join(rows)
