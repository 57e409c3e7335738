"""Scoring a checkpoint: predictions, decision thresholds chosen on validation, test metrics.

Accuracy alone misleads at 3 pneumonia : 1 normal, so every result carries AUROC, sensitivity
and specificity at a threshold picked on the validation split by a configured policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

from pneumo.checkpoints import LoadedModel
from pneumo.config import EvalConfig
from pneumo.data.transforms import normalize

if TYPE_CHECKING:
    import ray.data


@dataclass
class Predictions:
    labels: np.ndarray  # 0/1 ground truth
    probabilities: np.ndarray  # P(pneumonia)
    paths: list[str]


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, preprocessing) -> np.ndarray:
    """uint8 (N, C, H, W) images -> P(pneumonia) for each."""
    logits = model(normalize(images, preprocessing)).float().squeeze(1)
    return torch.sigmoid(logits).cpu().numpy()


def predict_dataset(loaded: LoadedModel, dataset: "ray.data.Dataset", batch_size: int = 64) -> Predictions:
    """Score every row of a prepared split (columns image, label, path) in this process."""
    preprocessing = loaded.meta.preprocessing_spec
    labels, probabilities, paths = [], [], []
    for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
        probabilities.append(predict_probabilities(loaded.model, torch.as_tensor(np.array(batch["image"])), preprocessing))
        labels.append(batch["label"])
        paths.extend(str(p) for p in batch["path"])
    return Predictions(np.concatenate(labels).astype(int), np.concatenate(probabilities), paths)


def choose_threshold(labels: np.ndarray, probabilities: np.ndarray, cfg: EvalConfig) -> float:
    """The decision threshold that `cfg.threshold_policy` picks on these (validation) predictions.

    youden: maximises sensitivity + specificity - 1; sensitivity/specificity: the threshold that keeps
    that rate at or above its target with the best value of the other; fixed: cfg.threshold.
    """
    if cfg.threshold_policy == "fixed" or len(np.unique(labels)) < 2:
        return cfg.threshold
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if cfg.threshold_policy == "youden":
        return float(thresholds[np.argmax(tpr - fpr)])
    if cfg.threshold_policy == "sensitivity":
        ok = np.flatnonzero(tpr >= cfg.target_sensitivity)
        return float(thresholds[ok[np.argmin(fpr[ok])]])
    ok = np.flatnonzero(1 - fpr >= cfg.target_specificity)
    return float(thresholds[ok[np.argmax(tpr[ok])]])


def binary_metrics(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """AUROC/AUPRC over all thresholds; the rest at `threshold` (probability >= threshold: pneumonia)."""
    predicted = (probabilities >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    sensitivity = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    return {
        "auroc": float(roc_auc_score(labels, probabilities)) if both_classes else float("nan"),
        "auprc": float(average_precision_score(labels, probabilities)) if both_classes else float("nan"),
        "accuracy": float((tp + tn) / len(labels)),
        "balanced_accuracy": float((sensitivity + specificity) / 2),
        "sensitivity": float(sensitivity),
        "specificity": float(specificity),
        "precision": float(tp / (tp + fp)) if tp + fp else 0.0,
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "threshold": float(threshold),
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
    }


def format_metrics_table(metrics: dict[str, float], title: str = "test") -> str:
    """A small fixed-width table for the end of a run."""
    rows = [f"{title} metrics (n={metrics['tp'] + metrics['fp'] + metrics['tn'] + metrics['fn']}, "
            f"threshold {metrics['threshold']:.3f})"]
    for key in ("auroc", "auprc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "precision", "f1"):
        rows.append(f"  {key:<18} {metrics[key]:.4f}")
    rows.append(f"  confusion           TP {metrics['tp']}  FN {metrics['fn']}  TN {metrics['tn']}  FP {metrics['fp']}")
    return "\n".join(rows)
