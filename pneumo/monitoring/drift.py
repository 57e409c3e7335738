"""Drift: a bounded window of recent inputs compared with the reference profile.

What is tested (three families, Bonferroni across them, so a window drawn from the training
distribution raises a false alarm with probability at most DRIFT_ALPHA):

* features: a kernel two-sample test (maximum mean discrepancy, Gaussian kernel at the median
  distance, p-value from PERMUTATIONS permutations) between the window's PCA-projected pre-logit
  features and the profile's reference sample;
* predictions: two-sample Kolmogorov-Smirnov test of the calibrated P(pneumonia);
* intensities: Kolmogorov-Smirnov test of each intensity statistic, Bonferroni over the statistics.

Why hand-written on SciPy/scikit-learn: alibi-detect (its MMDDrift was the first choice) requires
numpy < 2, evidently 0.7 (embedding drift) fails to import under pandas 3, and frouros pins older
numpy/SciPy; all three are incompatible with this stack (checked 2026-11-30). The statistic and the
permutation p-value follow alibi-detect's MMDDrift (Gretton et al. 2012).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy.stats import ks_2samp
from sklearn.metrics import pairwise_distances

from pneumo.monitoring.features import INTENSITY_NAMES
from pneumo.monitoring.profile import ReferenceProfile

DRIFT_ALPHA = 0.05  # family-wise false-alarm rate of one drift test
FAMILIES = ("features", "predictions", "intensities")
PERMUTATIONS = 500  # permutations of the MMD test: smallest p-value 1/501
MMD_REFERENCE = 500  # reference films used by the MMD test (its cost grows with the square)


@dataclass
class WindowData:
    """The inputs a window holds, row-aligned (no pixels)."""

    features: np.ndarray  # (n, k) PCA-projected pre-logit features
    intensities: np.ndarray  # (n, len(INTENSITY_NAMES))
    probabilities: np.ndarray  # (n,) calibrated P(pneumonia)
    out_of_distribution: np.ndarray  # (n,) bool: beyond the gate's cut-off
    times: np.ndarray  # (n,) arrival, seconds since the epoch

    def __len__(self) -> int:
        return len(self.probabilities)


class ObservationWindow:
    """The last `size` inputs of one Serve replica; thread-safe (requests and the drift check share it)."""

    def __init__(self, size: int):
        self.size = size
        self._rows: deque = deque(maxlen=size)
        self._lock = threading.Lock()
        self.added = 0  # inputs ever added: a change tells the periodic check to run again

    def add(
        self, features: np.ndarray, intensities: np.ndarray, probabilities: np.ndarray, out_of_distribution: np.ndarray
    ) -> None:
        now = time.time()
        with self._lock:
            self._rows.extend(zip(features, intensities, probabilities, out_of_distribution, [now] * len(features)))
            self.added += len(features)

    def snapshot(self) -> WindowData:
        with self._lock:
            rows = list(self._rows)
        if not rows:
            return WindowData(
                np.zeros((0, 0)), np.zeros((0, len(INTENSITY_NAMES))), np.zeros(0), np.zeros(0, bool), np.zeros(0)
            )
        columns = list(zip(*rows))
        return WindowData(
            np.stack(columns[0]),
            np.stack(columns[1]),
            np.array(columns[2]),
            np.array(columns[3], dtype=bool),
            np.array(columns[4]),
        )


def mmd_test(
    reference: np.ndarray, current: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0
) -> tuple[float, float]:
    """(MMD^2 statistic, permutation p-value) of two samples under a Gaussian kernel whose width is the
    median pairwise distance of the pooled sample."""
    pooled = np.concatenate([reference, current]).astype(np.float64)
    distances = pairwise_distances(pooled, metric="sqeuclidean")
    kernel = np.exp(-distances / max(np.median(distances[distances > 0]), 1e-12))
    n, rng = len(reference), np.random.default_rng(seed)
    labels = np.arange(len(pooled)) < n
    orders = np.stack([labels] + [rng.permutation(labels) for _ in range(permutations)], axis=1)
    weights = orders / n - ~orders / (len(pooled) - n)  # +1/n on the first sample, -1/m on the second
    statistics = np.einsum("ip,ip->p", weights, kernel @ weights)  # w' K w = biased MMD^2 per ordering
    return float(statistics[0]), float((1 + np.sum(statistics[1:] >= statistics[0])) / (1 + permutations))


def _ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    result = ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def detect_drift(profile: ReferenceProfile, window: WindowData, seed: int = 0) -> dict[str, Any]:
    """The three families' statistics and p-values, and whether any is below its Bonferroni level."""
    level = DRIFT_ALPHA / len(FAMILIES)
    rng = np.random.default_rng(seed)
    reference = profile.features[
        rng.choice(len(profile.features), min(MMD_REFERENCE, len(profile.features)), replace=False)
    ]
    mmd2, mmd_p = mmd_test(reference, window.features, seed=seed)
    ks_prob, p_prob = _ks(profile.probabilities, window.probabilities)
    per_statistic = {
        name: _ks(profile.intensities[:, i], window.intensities[:, i]) for i, name in enumerate(INTENSITY_NAMES)
    }
    p_intensities = min(1.0, len(INTENSITY_NAMES) * min(p for _, p in per_statistic.values()))
    families = {
        "features": {
            "test": "MMD permutation test on PCA-projected pre-logit features",
            "statistic": mmd2,
            "p_value": mmd_p,
            "drift": mmd_p < level,
        },
        "predictions": {
            "test": "Kolmogorov-Smirnov on P(pneumonia)",
            "statistic": ks_prob,
            "p_value": p_prob,
            "drift": p_prob < level,
            "mean_probability": float(window.probabilities.mean()),
            "reference_mean_probability": float(profile.probabilities.mean()),
        },
        "intensities": {
            "test": f"Kolmogorov-Smirnov per statistic, Bonferroni over {len(INTENSITY_NAMES)}",
            "p_value": p_intensities,
            "drift": p_intensities < level,
            "statistics": {
                name: {
                    "ks": ks,
                    "p_value": p,
                    "mean": float(window.intensities[:, i].mean()),
                    "reference_mean": float(profile.intensities[:, i].mean()),
                }
                for i, (name, (ks, p)) in enumerate(per_statistic.items())
            },
        },
    }
    return {
        "drift": any(family["drift"] for family in families.values()),
        "alpha": DRIFT_ALPHA,
        "level_per_family": level,
        **families,
    }


def drift_report(
    profile: Optional[ReferenceProfile], window: WindowData, capacity: int, min_inputs: int, reason_off: str = ""
) -> dict[str, Any]:
    """The /monitoring answer (and `pneumo monitor`'s): drift yes/no with its tests, OOD rate and the window."""
    span = {
        "size": len(window),
        "capacity": capacity,
        "first_input": float(window.times.min()) if len(window) else None,
        "last_input": float(window.times.max()) if len(window) else None,
        "span_s": float(window.times.max() - window.times.min()) if len(window) else 0.0,
    }
    ood = {
        "rate": float(window.out_of_distribution.mean()) if len(window) else 0.0,
        "count": int(window.out_of_distribution.sum()),
    }
    if profile is None:
        return {"status": "off", "drift": None, "reason": reason_off, "window": span}
    ood["cutoff"] = profile.gate.cutoff
    if len(window) < min_inputs:
        return {
            "status": "collecting",
            "drift": None,
            "window": span,
            "ood": ood,
            "reason": f"{len(window)} inputs so far; drift is tested from {min_inputs} on",
        }
    return {"status": "tested", **detect_drift(profile, window), "ood": ood, "window": span}
