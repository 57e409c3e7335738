"""The out-of-distribution gate: one score per image, and the cut-off beyond which the model should
say "this is not something I can judge" instead of a probability.

The score combines three distances from the films the model was trained on (chosen by measurement,
bench/monitoring_bench.py; docs/explanation/ood-and-drift.md):

* features: Mahalanobis distance of the image's PCA-projected pre-logit features (Ledoit-Wolf
  covariance from scikit-learn, fitted on the training films);
* residual: how much of the features lies outside the PCA subspace of the training films (an input
  the network has never seen activates directions the training films never did);
* intensities: Mahalanobis distance of the intensity statistics (features.py), which catch blank,
  inverted or upside-down images a small network's features may still place near chest films.

Each part is divided by its 99th percentile on val, the score is the largest of the three, and the
cut-off is the `VAL_QUANTILE` quantile of the val scores: about 1% of val films fall beyond it. Both
percentiles come from a log-normal fitted to the val values rather than from the empirical percentile,
which a hundred val films (the quickstart has 109) set by their one or two most unusual films: measured
on the quickstart model, 0.6% of test films and 1.0% of 2,000 fresh films fall beyond the fitted cut-off,
against 1.7% and 3.3% beyond the empirical one (bench/monitoring_bench.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm
from sklearn.covariance import LedoitWolf

OOD_PARTS = ("features", "residual", "intensities")
VAL_QUANTILE = 0.99  # share of val films inside the cut-off
MIN_SCALE = 1e-6  # floor of a standardising scale (a constant statistic on the training films)


@dataclass
class Mahalanobis:
    """Distance from a Gaussian fitted to standardised columns with Ledoit-Wolf shrinkage (stable with
    fewer films than dimensions)."""

    center: np.ndarray  # (m,) column means of the fitted rows
    scale: np.ndarray  # (m,) column standard deviations
    precision: np.ndarray  # (m, m) inverse shrunk covariance of the standardised columns

    @classmethod
    def fit(cls, rows: np.ndarray) -> Mahalanobis:
        center, scale = rows.mean(axis=0), np.maximum(rows.std(axis=0), MIN_SCALE)
        covariance = LedoitWolf().fit((rows - center) / scale)
        return cls(center, scale, covariance.get_precision())

    def distances(self, rows: np.ndarray) -> np.ndarray:
        z = (rows - self.center) / self.scale
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", z, self.precision, z), 0.0))


@dataclass
class OodGate:
    features: Mahalanobis  # on PCA-projected pre-logit features
    intensities: Mahalanobis  # on intensity statistics
    part_scales: np.ndarray  # (3,) val VAL_QUANTILE quantile of each part: one scale for all parts
    cutoff: float  # combined score above which an image is out of distribution

    def part_scores(self, projected: np.ndarray, residual: np.ndarray, intensities: np.ndarray) -> np.ndarray:
        """(N, 3) raw distances, in the order of OOD_PARTS."""
        return np.stack([self.features.distances(projected), residual, self.intensities.distances(intensities)], axis=1)

    def scores(self, projected: np.ndarray, residual: np.ndarray, intensities: np.ndarray) -> np.ndarray:
        """(N,) combined score: the largest part relative to its val scale (> cutoff: refuse)."""
        return (self.part_scores(projected, residual, intensities) / self.part_scales).max(axis=1)

    def refuses(self, scores: np.ndarray | float) -> np.ndarray | bool:
        """Whether each score is out of distribution: strictly above the cut-off (the one comparison
        every caller uses, so serving, pyfunc, eval and monitor refuse the same films)."""
        return np.asarray(scores) > self.cutoff


def tail_quantile(values: np.ndarray, quantile: float = VAL_QUANTILE) -> float:
    """The `quantile` of a log-normal fitted to positive `values` (distances)."""
    logs = np.log(np.maximum(values, MIN_SCALE))
    return float(np.exp(logs.mean() + norm.ppf(quantile) * logs.std(ddof=1)))


def fit_gate(
    train: tuple[np.ndarray, np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> OodGate:
    """Distances from the training films; scales and cut-off from val. Each argument is
    (projected features, residual norms, intensity statistics)."""
    projected, _, intensities = train
    gate = OodGate(Mahalanobis.fit(projected), Mahalanobis.fit(intensities), np.ones(len(OOD_PARTS)), 0.0)
    val_parts = gate.part_scores(*val)
    gate.part_scales = np.maximum([tail_quantile(part) for part in val_parts.T], MIN_SCALE)
    gate.cutoff = tail_quantile(gate.scores(*val))
    return gate
