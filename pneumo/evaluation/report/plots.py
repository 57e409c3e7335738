"""The report's pictures as PNG files, drawn with matplotlib's object API (no pyplot global state,
so it is safe in threads and needs no display).

Each function writes one file and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from pneumo.data.folder import CLASS_NAMES
from pneumo.models.calibration import Calibration, ReliabilityBins

DPI = 110


def save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def film_grid(n_films: int, columns: int) -> tuple[Figure, list]:
    """A figure of film-sized panels, `columns` wide, every axis hidden until a film is drawn on it."""
    rows = max(1, -(-n_films // columns))
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows))
    grid = list(np.atleast_1d(figure.subplots(rows, columns)).ravel())
    for axes in grid:
        axes.axis("off")
    return figure, grid


def plot_roc(labels: np.ndarray, probabilities: np.ndarray, metrics: dict[str, float], path: Path) -> Path:
    """ROC curve with the operating point (sensitivity, 1 - specificity at the threshold) marked."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    figure = Figure(figsize=(4.2, 4.2))
    axes = figure.subplots()
    axes.plot(fpr, tpr, lw=2, label=f"AUROC {metrics['auroc']:.3f}")
    axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    axes.plot(
        1 - metrics["specificity"],
        metrics["sensitivity"],
        "o",
        color="crimson",
        ms=8,
        label=f"threshold {metrics['threshold']:.2f}",
    )
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (test)", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    return save(figure, path)


def plot_precision_recall(labels: np.ndarray, probabilities: np.ndarray, metrics: dict[str, float], path: Path) -> Path:
    """Precision-recall curve with the operating point marked and the prevalence as the chance line."""
    precision, recall, _ = precision_recall_curve(labels, probabilities)
    figure = Figure(figsize=(4.2, 4.2))
    axes = figure.subplots()
    axes.plot(recall, precision, lw=2, label=f"AUPRC {metrics['auprc']:.3f}")
    axes.axhline(float(np.mean(labels)), ls="--", color="grey", lw=1, label="prevalence")
    axes.plot(
        metrics["sensitivity"],
        metrics["precision"],
        "o",
        color="crimson",
        ms=8,
        label=f"threshold {metrics['threshold']:.2f}",
    )
    axes.set(
        xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall (test)", xlim=(0, 1), ylim=(0, 1.01)
    )
    axes.legend(loc="lower left")
    return save(figure, path)


def plot_confusion(metrics: dict[str, float], path: Path) -> Path:
    """2x2 confusion matrix at the threshold, counts and row percentages."""
    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    figure = Figure(figsize=(4.2, 3.8))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        share = count / max(matrix[row].sum(), 1)
        axes.text(
            column,
            row,
            f"{count}\n{share:.0%}",
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
            fontsize=12,
        )
    axes.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=CLASS_NAMES,
        yticklabels=CLASS_NAMES,
        xlabel="predicted",
        ylabel="true",
        title=f"Confusion at threshold {metrics['threshold']:.2f}",
    )
    return save(figure, path)


def plot_reliability(bins: ReliabilityBins, calibration: Calibration, path: Path) -> Path:
    """Observed pneumonia rate against mean predicted probability per bin, with image counts below."""
    figure = Figure(figsize=(4.2, 5.0))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = bins.counts > 0
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = bins.edges[1] - bins.edges[0]
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.bar(centres[used], bins.observed_rate[used], width=width * 0.9, alpha=0.6, label="observed rate")
    top.plot(bins.mean_predicted[used], bins.observed_rate[used], "o-", color="crimson", ms=4)
    top.set(
        ylabel="fraction with pneumonia",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title=f"Reliability (test), ECE {bins.expected_calibration_error:.3f}\n"
        f"T={calibration.temperature:.2f}, bias={calibration.bias:+.2f}",
    )
    top.legend(loc="upper left")
    bottom.bar(centres, bins.counts, width=width * 0.9, color="grey")
    bottom.set(xlabel="predicted P(pneumonia)", ylabel="images")
    return save(figure, path)


def plot_training_curves(history: dict[str, list[tuple[int, float]]], path: Path) -> Path:
    """Loss, AUROC and learning rate per epoch from the run's MLflow history (key -> [(epoch, value)])."""
    panels = (("loss", ("train_loss", "val_loss")), ("AUROC", ("val_auroc",)), ("learning rate", ("lr",)))
    figure = Figure(figsize=(11, 3.4))
    for axes, (title, keys) in zip(figure.subplots(1, 3), panels):
        for key in keys:
            points = sorted(history.get(key, []))
            if points:
                epochs, values = zip(*points)
                axes.plot([e + 1 for e in epochs], values, "o-", ms=3, label=key)
        axes.set(xlabel="epoch", title=title)
        if any(history.get(key) for key in keys):
            axes.legend()
    return save(figure, path)


def plot_mistakes(
    images: list[np.ndarray],
    labels: list[int],
    probabilities: list[float],
    threshold: float,
    path: Path,
    columns: int = 4,
) -> Path:
    """A grid of (C, H, W) uint8 films, each titled with its truth and predicted probability."""
    figure, grid = film_grid(len(images), columns)
    for axes, image, label, probability in zip(grid, images, labels, probabilities):
        film = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        axes.imshow(film, cmap="gray", vmin=0, vmax=255)
        kind = "missed pneumonia" if label == 1 else "false alarm"
        axes.set_title(
            f"{kind}\nP={probability:.2f} (t={threshold:.2f})",
            fontsize=8,
            color="crimson" if label == 1 else "darkorange",
        )
    if not images:
        grid[0].text(0.5, 0.5, "no mistakes on test", ha="center", va="center")
    return save(figure, path)
