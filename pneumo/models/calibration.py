"""Calibration of P(pneumonia): reliability bins, expected calibration error, and a recalibration
fitted on validation.

Few epochs leave probabilities that rank well but do not mean what they say. Temperature scaling
(Guo et al., 2017) divides the logit by one scalar T; Platt scaling also shifts it by a bias b,
which undoes the prior shift of a class-balanced loss (positives weighted by negatives/positives).
Both are monotonic: they change no ranking (AUROC) and no decision (the threshold is chosen after
them), only how far a probability can be trusted as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

LOG_T_BOUNDS = (np.log(0.02), np.log(50.0))  # temperatures outside [0.02, 50] mean a broken model


@dataclass(frozen=True)
class Calibration:
    """P(pneumonia) = sigmoid(logit / temperature + bias)."""

    temperature: float = 1.0
    bias: float = 0.0  # 0 for temperature scaling

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return expit(np.asarray(logits, dtype=np.float64) / self.temperature + self.bias)


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


def _negative_log_likelihood(labels: np.ndarray, logits: np.ndarray, log_t: float, bias: float) -> float:
    scaled = logits / np.exp(log_t) + bias
    return -float(np.mean(labels * log_expit(scaled) + (1 - labels) * log_expit(-scaled)))


def fit_calibration(labels: np.ndarray, logits: np.ndarray, method: str = "temperature") -> Calibration:
    """The calibration (`temperature`, `platt` or `none`) that minimises validation negative log-likelihood."""
    labels, logits = np.asarray(labels, dtype=np.float64), np.asarray(logits, dtype=np.float64)
    if method == "none" or len(np.unique(labels)) < 2:
        return Calibration()  # one class only: any scale "fits"; keep the model's own
    if method == "temperature":
        best = minimize(
            lambda x: _negative_log_likelihood(labels, logits, x[0], 0.0),
            x0=[0.0],
            bounds=[LOG_T_BOUNDS],
            method="L-BFGS-B",
        )
        return Calibration(float(np.exp(best.x[0])))
    best = minimize(
        lambda x: _negative_log_likelihood(labels, logits, x[0], x[1]),
        x0=[0.0, 0.0],
        bounds=[LOG_T_BOUNDS, (-20.0, 20.0)],
        method="L-BFGS-B",
    )
    return Calibration(float(np.exp(best.x[0])), float(best.x[1]))


def describe_calibration(calibration: Calibration, method: str) -> str:
    """One line for reports: "temperature: T=1.42, bias=+0.00"."""
    return f"{method}: T={calibration.temperature:.4f}, bias={calibration.bias:+.4f}"
