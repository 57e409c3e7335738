"""What monitoring keeps of an image: the network's pre-logit features (timm's
`forward_head(..., pre_logits=True)`), a few intensity statistics of the decoded film, and the calibrated
P(pneumonia), all from one forward pass. Never the pixels.

The intensity statistics are computed on the uint8 image the model sees (after decoding and resizing),
so they describe exposure, contrast, sharpness, noise and the rough layout of the film in units a
radiographer recognises, and they catch what features of a small network may miss (a blank image, an
inverted or upside-down film).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from pneumo.models.checkpoints import LoadedModel
from pneumo.models.runtimes import FilmsToOutputs

if TYPE_CHECKING:
    import ray.data

INTENSITY_NAMES = (
    "mean",  # average brightness, 0..1 (exposure, window)
    "std",  # contrast
    "p05",
    "p50",
    "p95",  # dark, median and bright percentiles
    "dark_fraction",  # share of pixels below 0.05 (air, collimation, black borders)
    "bright_fraction",  # share above 0.95 (burnt-in labels, saturation, bone on hard exposures)
    "gradient",  # mean |gradient| per pixel: sharpness and edges (falls with blur)
    "laplacian",  # mean |Laplacian|: fine detail and noise (rises with quantum noise)
    "top_minus_bottom",  # mean of the top third minus the bottom third: which way up the film is
    "centre_minus_sides",  # mean of the central third of columns minus the outer thirds: mediastinum vs lungs
)
DARK, BRIGHT = 0.05, 0.95


@dataclass
class Observations:
    """Per-image monitoring record of N images, row-aligned."""

    features: np.ndarray  # (N, D) float32 pre-logit features
    intensities: np.ndarray  # (N, len(INTENSITY_NAMES)) float32
    probabilities: np.ndarray  # (N,) calibrated P(pneumonia)

    def __len__(self) -> int:
        return len(self.probabilities)

    def take(self, rows: np.ndarray) -> Observations:
        return Observations(self.features[rows], self.intensities[rows], self.probabilities[rows])

    @classmethod
    def concat(cls, parts: list[Observations]) -> Observations:
        return cls(
            *(
                np.concatenate([getattr(p, name) for p in parts])
                for name in ("features", "intensities", "probabilities")
            )
        )


def intensity_statistics(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, len(INTENSITY_NAMES)) float32; channels are averaged to grey."""
    grey = images.astype(np.float32).mean(axis=1) / 255.0
    n, height, width = grey.shape
    flat = grey.reshape(n, -1)
    p05, p50, p95 = np.percentile(flat, [5, 50, 95], axis=1)
    gradient = np.abs(np.diff(grey, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(grey, axis=2)).mean(axis=(1, 2))
    laplacian = np.abs(
        grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] - 4 * grey[:, 1:-1, 1:-1]
    ).mean(axis=(1, 2))  # interior pixels
    third_h, third_w = max(height // 3, 1), max(width // 3, 1)
    top, bottom = grey[:, :third_h].mean(axis=(1, 2)), grey[:, -third_h:].mean(axis=(1, 2))
    centre = grey[:, :, third_w : width - third_w].mean(axis=(1, 2))
    sides = np.concatenate([grey[:, :, :third_w], grey[:, :, -third_w:]], axis=2).mean(axis=(1, 2))
    columns = [
        flat.mean(1),
        flat.std(1),
        p05,
        p50,
        p95,
        (flat < DARK).mean(1),
        (flat > BRIGHT).mean(1),
        gradient,
        laplacian,
        top - bottom,
        centre - sides,
    ]
    return np.stack(columns, axis=1).astype(np.float32)


@torch.inference_mode()
def observe(loaded: LoadedModel, images: torch.Tensor) -> Observations:
    """uint8 (N, C, H, W) images -> features, intensity statistics and calibrated probabilities.

    The logits come from the same pass as the features (runtimes.FilmsToOutputs, which every serving
    runtime runs), so this replaces (does not add to) the prediction's forward pass.
    """
    logits, features = FilmsToOutputs(loaded.model, loaded.meta.preprocessing_spec)(images)
    return observations(images.cpu().numpy(), logits.cpu().numpy(), features.cpu().numpy(), loaded)


def observations(images: np.ndarray, logits: np.ndarray, features: np.ndarray, loaded: LoadedModel) -> Observations:
    """A pass's outputs over uint8 (N, C, H, W) `images` -> their monitoring record."""
    return Observations(
        features,
        intensity_statistics(images),
        loaded.meta.calibration.probabilities(logits).astype(np.float32),
    )


def observe_dataset(loaded: LoadedModel, dataset: ray.data.Dataset, batch_size: int = 64) -> Observations:
    """Observations of every row of a prepared split (column image), in this process."""
    parts = [
        observe(loaded, torch.as_tensor(np.ascontiguousarray(batch["image"])))
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy")
    ]
    if not parts:
        raise ValueError("no images to observe")
    return Observations.concat(parts)
