"""The drift report's pictures, drawn with matplotlib's object API and embedded as PNG data URIs so
report.html stays one self-contained file: reference-vs-here histograms of each intensity statistic
and of P(pneumonia), the films in the profile's first two PCA directions, and film thumbnails.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from pneumo.monitoring.features import INTENSITY_NAMES, Observations
from pneumo.monitoring.profile import ReferenceProfile

DPI = 100
REFERENCE_COLOUR, HERE_COLOUR = "#1f77b4", "#d62728"
THUMBNAIL_PX = 128


def data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _histogram(axes, reference: np.ndarray, here: np.ndarray, title: str) -> None:
    edges = np.histogram_bin_edges(np.concatenate([reference, here]), bins=30)
    axes.hist(reference, bins=edges, density=True, alpha=0.5, color=REFERENCE_COLOUR, label="reference")
    axes.hist(here, bins=edges, density=True, alpha=0.5, color=HERE_COLOUR, label="here")
    axes.set_title(title, fontsize=9)
    axes.tick_params(labelsize=7)
    axes.set_yticks([])


def distributions(profile: ReferenceProfile, here: Observations) -> str:
    """One panel per intensity statistic and one for P(pneumonia): reference sample vs these films."""
    panels = [*INTENSITY_NAMES, "P(pneumonia)"]
    columns = 4
    figure = Figure(figsize=(2.6 * columns, 2.0 * -(-len(panels) // columns)))
    grid = np.atleast_1d(figure.subplots(-(-len(panels) // columns), columns)).ravel()
    for i, name in enumerate(INTENSITY_NAMES):
        _histogram(grid[i], profile.intensities[:, i], here.intensities[:, i], name)
    _histogram(grid[len(INTENSITY_NAMES)], profile.probabilities, here.probabilities, "P(pneumonia)")
    grid[0].legend(fontsize=7)
    for axes in grid[len(panels) :]:
        axes.axis("off")
    return data_uri(figure)


def feature_map(profile: ReferenceProfile, here_projected: np.ndarray, refused: np.ndarray) -> str:
    """The reference sample and these films on the profile's first two principal directions; films the
    gate refuses are drawn as crosses."""
    figure = Figure(figsize=(5.2, 4.4))
    axes = figure.subplots()
    axes.scatter(*profile.features[:, :2].T, s=8, alpha=0.4, color=REFERENCE_COLOUR, label="reference")
    inside = ~refused
    axes.scatter(*here_projected[inside, :2].T, s=8, alpha=0.5, color=HERE_COLOUR, label="here")
    if refused.any():
        axes.scatter(*here_projected[refused, :2].T, s=22, marker="x", color="black", label="here, out of distribution")
    axes.set_xlabel("PCA direction 1 of the training features")
    axes.set_ylabel("PCA direction 2")
    axes.legend(fontsize=8)
    return data_uri(figure)


def thumbnail(image: np.ndarray) -> str:
    """A decoded (C, H, W) uint8 film as a small grey PNG data URI."""
    grey = np.asarray(image, dtype=np.uint8).mean(axis=0).astype(np.uint8) if image.ndim == 3 else image
    picture = Image.fromarray(grey).resize((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
