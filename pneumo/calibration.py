"""Calibration of P(pneumonia): reliability bins, expected calibration error, temperature scaling.

A class-balanced loss and a few epochs leave probabilities that rank well but do not mean what they
say. Temperature scaling (Guo et al., 2017) divides the logit by one scalar T fitted on validation:
it changes no ranking (AUROC) and no decision (the threshold is chosen after it), only how far a
probability can be trusted as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit


def apply_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(pneumonia) = sigmoid(logit / T)."""
    return expit(np.asarray(logits, dtype=np.float64) / temperature)


@dataclass
class ReliabilityBins:
    edges: np.ndarray  # n_bins + 1 equal-width edges over [0, 1]
    mean_predicted: np.ndarray  # mean P(pneumonia) in each bin (nan when empty)
    observed_rate: np.ndarray  # fraction of pneumonia labels in each bin (nan when empty)
    counts: np.ndarray  # images in each bin

    @property
    def expected_calibration_error(self) -> float:
        """Sum over bins of (share of images) x |observed rate - mean predicted probability|."""
        used = self.counts > 0
        weights = self.counts[used] / self.counts.sum()
        return float(np.sum(weights * np.abs(self.observed_rate[used] - self.mean_predicted[used])))


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Equal-width bins of P(pneumonia); a probability of exactly 1 falls in the last bin."""
    labels, probabilities = np.asarray(labels, dtype=np.float64), np.asarray(probabilities, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(probabilities, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, probabilities, n_bins) / counts
        observed_rate = np.bincount(index, labels, n_bins) / counts
    return ReliabilityBins(edges, mean_predicted, observed_rate, counts)


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 15) -> float:
    return reliability_bins(labels, probabilities, n_bins).expected_calibration_error


def fit_temperature(labels: np.ndarray, logits: np.ndarray) -> float:
    """The T in [0.02, 50] that minimises the validation negative log-likelihood of sigmoid(logit / T)."""
    labels, logits = np.asarray(labels, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    if len(np.unique(labels)) < 2:
        return 1.0  # one class only: any T "fits"; keep the model's own scale

    def negative_log_likelihood(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        return -float(np.mean(labels * log_expit(scaled) + (1 - labels) * log_expit(-scaled)))

    best = minimize_scalar(negative_log_likelihood, bounds=(np.log(0.02), np.log(50.0)), method="bounded",
                           options={"xatol": 1e-4})
    return float(np.exp(best.x))
