"""The reference profile: what the trained network saw on its own training and validation films,
stored with the checkpoint (checkpoints.PROFILE_FILE) so it travels into MLflow with the model and
every consumer (Serve, `pneumo eval`, `pneumo monitor`, the pyfunc model) reads the same one.

Bounded size whatever the dataset: a PCA of the pre-logit features (PCA_COMPONENTS x feature width),
the out-of-distribution gate (two small covariance matrices) and a random sample of at most
REFERENCE_SAMPLE films (projected features, intensity statistics, probability) for the drift tests.
resnet10t (512 features): about 216 KB for the quickstart and the same for 5,000 films (docs/explanation/ood-and-drift.md).

    profile = build_profile(observe_dataset(loaded, train), observe_dataset(loaded, val))
    write_profile(model_dir, profile)          # next to pneumo.json
    profile = profile_of(load_checkpoint(model_dir))   # None for a model registered before profiles
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from sklearn.decomposition import PCA

from pneumo.models.checkpoints import LoadedModel, load_checkpoint, write_profile_arrays
from pneumo.monitoring.features import INTENSITY_NAMES, Observations, observe_dataset
from pneumo.monitoring.ood import Mahalanobis, OodGate, fit_gate

if TYPE_CHECKING:
    import ray.data

    from pneumo.data.dataset import PreparedData

PCA_COMPONENTS = 32  # feature directions kept (timm pre-logits are 512-2048 wide)
REFERENCE_SAMPLE = 1000  # films kept for the drift tests: bounds the profile's size
PROFILE_VERSION = 1
NO_PROFILE = (
    "the model has no reference profile (it was saved before pneumo stored one with each model): "
    "train and register it again with `pneumo run` to turn the gate and drift on"
)


@dataclass
class ReferenceProfile:
    pca_mean: np.ndarray  # (D,) feature means of the training films
    pca_components: np.ndarray  # (k, D) principal directions of the training films' features
    features: np.ndarray  # (n, k) projected features of the reference sample
    intensities: np.ndarray  # (n, len(INTENSITY_NAMES)) intensity statistics of the sample
    probabilities: np.ndarray  # (n,) calibrated P(pneumonia) of the sample
    gate: OodGate  # out-of-distribution score and cut-off
    n_train: int  # training films the PCA and the gate were fitted on
    n_val: int  # val films the gate's scales and cut-off were fitted on

    def project(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pre-logit features -> (projected (N, k), norm of the part outside the PCA subspace (N,))."""
        centred = features - self.pca_mean
        projected = centred @ self.pca_components.T
        residual = np.linalg.norm(centred - projected @ self.pca_components, axis=1)
        return projected.astype(np.float32), residual.astype(np.float32)

    def ood_scores(self, observed: Observations) -> np.ndarray:
        projected, residual = self.project(observed.features)
        return self.gate.scores(projected, residual, observed.intensities)

    def to_arrays(self) -> dict[str, np.ndarray]:
        gate = self.gate
        return {
            "version": np.array(PROFILE_VERSION),
            "pca_mean": self.pca_mean,
            "pca_components": self.pca_components,
            "features": self.features,
            "intensities": self.intensities,
            "probabilities": self.probabilities,
            "intensity_names": np.array(INTENSITY_NAMES),
            **{
                f"gate_{part}_{key}": getattr(getattr(gate, part), key)
                for part in ("features", "intensities")
                for key in ("center", "scale", "precision")
            },
            "gate_part_scales": gate.part_scales,
            "gate_cutoff": np.array(gate.cutoff),
            "n_train": np.array(self.n_train),
            "n_val": np.array(self.n_val),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ReferenceProfile:
        if int(arrays["version"]) != PROFILE_VERSION or tuple(arrays["intensity_names"]) != INTENSITY_NAMES:
            raise ValueError(
                f"reference profile version {int(arrays['version'])} is not {PROFILE_VERSION}: "
                "recompute it with this pneumo"
            )
        parts = {
            part: Mahalanobis(*(arrays[f"gate_{part}_{key}"] for key in ("center", "scale", "precision")))
            for part in ("features", "intensities")
        }
        gate = OodGate(
            parts["features"], parts["intensities"], arrays["gate_part_scales"], float(arrays["gate_cutoff"])
        )
        return cls(
            arrays["pca_mean"],
            arrays["pca_components"],
            arrays["features"],
            arrays["intensities"],
            arrays["probabilities"],
            gate,
            int(arrays["n_train"]),
            int(arrays["n_val"]),
        )


def build_profile(train: Observations, val: Observations, seed: int = 0) -> ReferenceProfile:
    """PCA and gate from the training films, gate scales and cut-off from val; the drift reference is a
    sample of both (val first: films the network did not learn from)."""
    components = min(PCA_COMPONENTS, train.features.shape[1], len(train) - 1)
    pca = PCA(n_components=components, random_state=seed).fit(train.features)
    profile = ReferenceProfile(
        pca.mean_.astype(np.float32),
        pca.components_.astype(np.float32),
        np.zeros(0),
        np.zeros(0),
        np.zeros(0),
        None,
        len(train),
        len(val),
    )
    profile.gate = fit_gate(
        (*profile.project(train.features), train.intensities), (*profile.project(val.features), val.intensities)
    )
    sample = _reference_sample(train, val, seed)
    profile.features = profile.project(sample.features)[0]
    profile.intensities, profile.probabilities = sample.intensities, sample.probabilities
    return profile


def _reference_sample(train: Observations, val: Observations, seed: int) -> Observations:
    """Every val film and a random share of training films, REFERENCE_SAMPLE at most."""
    rng = np.random.default_rng(seed)
    n_val = min(len(val), REFERENCE_SAMPLE)
    n_train = min(len(train), REFERENCE_SAMPLE - n_val)
    return Observations.concat(
        [
            val.take(rng.choice(len(val), n_val, replace=False)),
            train.take(rng.choice(len(train), n_train, replace=False)),
        ]
    )


def write_profile(model_dir: str | Path, profile: ReferenceProfile) -> None:
    write_profile_arrays(model_dir, profile.to_arrays())


def profile_checkpoint(model_dir: str | Path, data: PreparedData, batch_size: int = 64) -> ReferenceProfile:
    """Observe the evaluated model (its calibration included) on the train and val splits and store the
    profile next to its pneumo.json, so it is registered with the model (end of `pneumo run`)."""
    loaded = load_checkpoint(model_dir)
    profile = build_profile(
        observe_dataset(loaded, data.datasets["train"], batch_size),
        observe_dataset(loaded, data.datasets["val"], batch_size),
    )
    write_profile(model_dir, profile)
    return profile


def gate_summary(loaded: LoadedModel, dataset: ray.data.Dataset, batch_size: int = 64) -> Optional[dict[str, float]]:
    """How many films of a prepared split the gate would refuse (`pneumo eval` reports it); None without
    a profile."""
    profile = profile_of(loaded)
    if profile is None:
        return None
    refused = profile.gate.refuses(profile.ood_scores(observe_dataset(loaded, dataset, batch_size)))
    return {
        "ood_refused": float(refused.mean()),
        "ood_refused_count": int(refused.sum()),
        "ood_cutoff": profile.gate.cutoff,
    }


def profile_of(loaded: LoadedModel) -> Optional[ReferenceProfile]:
    """The profile stored with a loaded checkpoint, or None (see NO_PROFILE)."""
    return ReferenceProfile.from_arrays(loaded.profile_arrays) if loaded.profile_arrays is not None else None
