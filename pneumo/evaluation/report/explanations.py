"""The report's "Where the model looked" section: overlays of the most confident mistakes and
of a few confident correct films, and, on a synthetic set, how well the maps find the drawn opacities."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pneumo.evaluation.evaluate import Evaluation, confident_mistakes
from pneumo.evaluation.explain import METHOD, Explainer, ExplanationError, overlay_image
from pneumo.evaluation.localization import CONFIDENCE_LEVEL, Localization
from pneumo.evaluation.report.html import _figure, _table
from pneumo.evaluation.report.plots import film_grid, save
from pneumo.models.checkpoints import LoadedModel

OVERLAYS_SHOWN = 8  # mistakes with their maps (false negatives first)
CORRECT_SHOWN = 4  # confident correct films with their maps: half pneumonia, half normal
COLUMNS = 4


def confident_correct(labels: np.ndarray, probabilities: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices of the most confident right answers: up to limit/2 pneumonia films, the rest normal."""
    hits = np.flatnonzero((labels == 1) & (probabilities >= threshold))
    rejections = np.flatnonzero((labels == 0) & (probabilities < threshold))
    hits = hits[np.argsort(-probabilities[hits], kind="stable")][: (limit + 1) // 2]
    rejections = rejections[np.argsort(probabilities[rejections], kind="stable")][: limit - len(hits)]
    return np.concatenate([hits, rejections]).astype(int)


def plot_overlays(films: list[np.ndarray], maps: np.ndarray, captions: list[str], path: Path) -> Path:
    """A grid of (C, H, W) uint8 films with their maps blended in, each with a caption."""
    figure, grid = film_grid(len(films), COLUMNS)
    for axes, film, cam, caption in zip(grid, films, maps, captions):
        axes.imshow(overlay_image(film[0], cam))
        axes.set_title(caption, fontsize=8)
    return save(figure, path)


def _caption(label: int, probability: float, threshold: float) -> str:
    truth = "pneumonia" if label == 1 else "normal"
    said = "PNEUMONIA" if probability >= threshold else "NORMAL"
    return f"true {truth}, said {said}\nP={probability:.2f} (t={threshold:.2f})"


def _overlay_figure(
    explainer: Explainer, evaluation: Evaluation, images: dict[str, np.ndarray], indices: np.ndarray, path: Path
) -> Optional[Path]:
    paths = [evaluation.test.paths[i] for i in indices if evaluation.test.paths[i] in images]
    if not paths:
        return None
    index_of = {evaluation.test.paths[i]: i for i in indices}
    films = [images[p] for p in paths]
    maps = explainer.explain(torch.from_numpy(np.stack(films)))
    captions = [
        _caption(
            int(evaluation.test.labels[index_of[p]]),
            float(evaluation.test_probabilities[index_of[p]]),
            evaluation.threshold,
        )
        for p in paths
    ]
    return plot_overlays(films, maps, captions, path)


def localization_table(found: Localization) -> str:
    rows = [
        [
            "pointing game (peak inside an opacity)",
            found.pointing_game_text(),
            f"{found.area_fraction:.3f}",
            f"{found.randomized_pointing_game:.3f}",
        ],
        [
            f"pointing game of a perfect {found.map_size[0]}x{found.map_size[1]} map (Grad-CAM's ceiling at the layer)",
            f"{found.perfect_map_pointing_game:.3f}",
            "-",
            "-",
        ],
        ["heatmap mass inside opacities", f"{found.mass_inside:.3f}", f"{found.area_fraction:.3f}", "-"],
        [
            "rank correlation with the trained model's maps",
            "1",
            "-",
            f"{found.randomized_rank_correlation:.3f} (median)",
        ],
    ]
    return (
        f"<p class='note'>{found.n_films} pneumonia films with a drawn opacity; the pointing game with its "
        f"{CONFIDENCE_LEVEL:.0%} Wilson interval. Random baseline: a point or a "
        "uniform map lands inside the opacities as often as they cover the film (area fraction). Randomized "
        "weights: the same architecture with re-drawn weights (Adebayo et al. 2018); its maps should differ "
        "(low rank correlation) and lose the opacities. A perfect map at the target layer's resolution (each "
        "opacity averaged over the layer's cells) is what Grad-CAM alone could reach there; the maps' input-"
        "gradient factor is at full resolution.</p>"
        + _table(["", METHOD, "random baseline", "randomized weights"], rows)
    )


def explanation_section(
    loaded: LoadedModel,
    evaluation: Evaluation,
    images: dict[str, np.ndarray],
    localization: Optional[Localization],
    out: Path,
) -> str:
    """The section's HTML (figures inlined); `images` holds the decoded films of the split by path."""
    try:
        explainer = Explainer(loaded)
    except ExplanationError as error:
        return f"<h2>Where the model looked</h2><p class='note'>No {METHOD} maps: {html.escape(str(error))}</p>"
    labels, probabilities, threshold = evaluation.test.labels, evaluation.test_probabilities, evaluation.threshold
    figures = {
        "Most confident mistakes, missed pneumonia first": _overlay_figure(
            explainer,
            evaluation,
            images,
            confident_mistakes(labels, probabilities, threshold, OVERLAYS_SHOWN),
            out / "cam_mistakes.png",
        ),
        "Confident correct films": _overlay_figure(
            explainer,
            evaluation,
            images,
            confident_correct(labels, probabilities, threshold, CORRECT_SHOWN),
            out / "cam_correct.png",
        ),
    }
    pictures = "".join(_figure(caption, path) for caption, path in figures.items() if path is not None)
    located = localization_table(localization) if localization else ""
    return (
        "<h2>Where the model looked</h2><p class='note'>Maps of the PNEUMONIA logit (Grad-CAM at layer "
        f"<code>{html.escape(explainer.target_layer)}</code> x the input gradient): brighter is more evidence "
        "for pneumonia.</p>"
        f"<div class='figures'>{pictures}</div>{located}"
    )


def films_to_explain(evaluation: Evaluation) -> list[str]:
    """Paths of the films the section shows, so the caller reads only those from the dataset."""
    labels, probabilities, threshold = evaluation.test.labels, evaluation.test_probabilities, evaluation.threshold
    indices = np.concatenate(
        [
            confident_mistakes(labels, probabilities, threshold, OVERLAYS_SHOWN),
            confident_correct(labels, probabilities, threshold, CORRECT_SHOWN),
        ]
    )
    return [evaluation.test.paths[i] for i in indices]
