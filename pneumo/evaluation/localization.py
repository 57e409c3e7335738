"""Are the maps right? Explanations scored against where the synthetic generator drew each opacity.

A synthetic set (pneumo.data.synthetic) keeps a mask per pneumonia film in opacity_masks/. On those
films:
- pointing game (Zhang et al. 2018): share of films whose heatmap peak lies inside a drawn opacity;
  a point dropped at random hits with probability = the opacity's area fraction (its baseline). With
  its 95% Wilson interval: on ~125 films a share near 0.8 is known to about +-0.07;
- mass inside: share of the heatmap's total mass inside the opacities; a uniform map puts the
  area fraction there (its baseline);
- a perfect map at the layer's resolution: the pointing game of the masks themselves seen through the
  target layer's cells (each mask averaged over the cells, then brought to the input size like a
  Grad-CAM map): what Grad-CAM alone could reach there. A map of 4x4 cells peaks at one of 16 cell
  centres, and a small opacity may hold none of them; the input-gradient factor of the maps
  (pneumo.evaluation.explain) is at full resolution, which is how they can score above it;
- the sanity check of Adebayo et al. (2018): the same films explained by the model with its weights
  re-drawn at random; maps that barely change (high rank correlation) would not depend on what the
  model learned.
A map with no positive evidence at all has no peak and no mass: it counts as a miss and as 0.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from PIL import Image
from scipy.stats import binomtest, spearmanr

from pneumo.data.synthetic import OPACITY_MASKS_DIR, opacity_mask_path
from pneumo.evaluation.explain import METHOD, Explainer, ExplanationError, to_input_size
from pneumo.models.checkpoints import LoadedModel

if TYPE_CHECKING:
    from pneumo.data.dataset import PreparedData

RANDOMIZATION_SEED = 0  # weights re-drawn for the sanity check
CONFIDENCE_LEVEL = 0.95  # of the pointing game's interval


@dataclass
class Localization:
    n_films: int  # pneumonia films with a drawn opacity that were scored
    target_layer: str  # the layer the maps come from
    map_size: tuple[int, int]  # (height, width) of that layer's map, in cells
    pointing_game: float  # share of films whose map peak is inside an opacity
    pointing_game_ci: tuple[float, float]  # its Wilson interval at CONFIDENCE_LEVEL
    mass_inside: float  # mean share of heatmap mass inside the opacities
    area_fraction: float  # mean share of the image the opacities cover: the baseline of both
    perfect_map_pointing_game: float  # pointing game of a perfect map at map_size: Grad-CAM's ceiling there
    randomized_rank_correlation: float  # median Spearman correlation, trained vs randomized-weights maps
    randomized_pointing_game: float  # pointing game of the randomized-weights maps

    def pointing_game_text(self) -> str:
        """The pointing game and its interval, as the summary and the report show them."""
        low, high = self.pointing_game_ci
        return f"{self.pointing_game:.3f} [{low:.3f}, {high:.3f}]"

    def summary(self) -> str:
        """What `pneumo eval` prints."""
        height, width = self.map_size
        return (
            f"{METHOD} at {self.target_layer} ({height}x{width}) on {self.n_films} pneumonia films with drawn "
            f"opacities (random baseline = area fraction {self.area_fraction:.3f}):\n  pointing game "
            f"{self.pointing_game_text()} (Grad-CAM's ceiling, a perfect {height}x{width} "
            f"map: {self.perfect_map_pointing_game:.3f})  mass inside "
            f"{self.mass_inside:.3f}"
            f"\n  randomized weights: pointing game {self.randomized_pointing_game:.3f}, rank correlation with the "
            f"trained maps {self.randomized_rank_correlation:.3f}"
        )

    def metrics(self) -> dict[str, float]:
        """The figures as MLflow metric names (prefixed with the split by the caller)."""
        return {
            "cam_pointing_game": self.pointing_game,
            "cam_pointing_game_ci_low": self.pointing_game_ci[0],
            "cam_pointing_game_ci_high": self.pointing_game_ci[1],
            "cam_mass_inside": self.mass_inside,
            "cam_area_fraction": self.area_fraction,
            "cam_perfect_map_pointing_game": self.perfect_map_pointing_game,
            "cam_randomized_rank_correlation": self.randomized_rank_correlation,
            "cam_randomized_pointing_game": self.randomized_pointing_game,
        }


def has_opacity_masks(data_root: str | Path) -> bool:
    return (Path(data_root) / OPACITY_MASKS_DIR).is_dir()


def read_opacity_mask(data_root: str | Path, image_path: str | Path, image_size: int) -> Optional[np.ndarray]:
    """The opacity mask of a film of the set at data_root, resized like the film (plain resize to the
    model's square input), as bool (image_size, image_size); None for a film without one."""
    root = Path(data_root).resolve()
    path = opacity_mask_path(root, Path(image_path).resolve().relative_to(root))
    if not path.is_file():
        return None
    with Image.open(path) as mask:
        resized = mask.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized) >= 128


def peak_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per film: is the map's highest pixel inside the mask? (N, H, W) each; an all-zero map misses."""
    flat = maps.reshape(len(maps), -1)
    peaks = flat.argmax(axis=1)
    return masks.reshape(len(masks), -1)[np.arange(len(maps)), peaks] & (flat.max(axis=1) > 0)


def mass_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per film: share of the map's mass inside the mask (0 for an all-zero map)."""
    total = maps.reshape(len(maps), -1).sum(axis=1)
    inside = (maps * masks).reshape(len(maps), -1).sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def perfect_map_pointing_game(masks: np.ndarray, map_size: tuple[int, int]) -> float:
    """Pointing game of the masks themselves seen through a map of map_size cells: each mask's share of
    every cell, brought back to the input size the way Explainer brings Grad-CAM maps."""
    cells = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(masks[:, None].astype(np.float32)), map_size)
    return float(peak_inside(to_input_size(cells, masks.shape[-2:]), masks).mean())


def rank_correlations(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (0 where either map is constant)."""
    values = []
    for a, b in zip(first.reshape(len(first), -1), second.reshape(len(second), -1)):
        values.append(0.0 if a.std() == 0 or b.std() == 0 else float(spearmanr(a, b).statistic))
    return np.array(values)


def randomized_copy(loaded: LoadedModel, seed: int = RANDOMIZATION_SEED) -> LoadedModel:
    """The same architecture with every layer's weights re-drawn by its own initializer (Adebayo et al.'s
    full randomization), preprocessing and calibration kept."""
    model = copy.deepcopy(loaded.model)
    torch.manual_seed(seed)
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return LoadedModel(model.eval(), loaded.meta)


def explain_in_batches(explainer: Explainer, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [
            explainer.explain(torch.from_numpy(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
    )


def score_localization(
    loaded: LoadedModel, images: np.ndarray, masks: np.ndarray, batch_size: int = 32
) -> Localization:
    """uint8 (N, C, H, W) pneumonia films at the model's input and their bool (N, H, W) opacity masks."""
    explainer = Explainer(loaded)
    maps = explain_in_batches(explainer, images, batch_size)
    randomized = explain_in_batches(Explainer(randomized_copy(loaded)), images, batch_size)
    hits = peak_inside(maps, masks)
    interval = binomtest(int(hits.sum()), len(hits)).proportion_ci(CONFIDENCE_LEVEL, method="wilson")
    return Localization(
        n_films=len(images),
        target_layer=explainer.target_layer,
        map_size=explainer.map_size,
        pointing_game=float(hits.mean()),
        pointing_game_ci=(float(interval.low), float(interval.high)),
        mass_inside=float(mass_inside(maps, masks).mean()),
        area_fraction=float(masks.mean()),
        perfect_map_pointing_game=perfect_map_pointing_game(masks, explainer.map_size),
        randomized_rank_correlation=float(np.median(rank_correlations(maps, randomized))),
        randomized_pointing_game=float(peak_inside(randomized, masks).mean()),
    )


def localize_split(
    loaded: LoadedModel, data: PreparedData, split: str, data_root: str | Path, batch_size: int = 32
) -> Optional[Localization]:
    """Localization on the films of `split` that have a drawn opacity; None unless data_root is a
    synthetic set with opacity masks (real data has no ground truth here)."""
    if not has_opacity_masks(data_root):
        return None
    size = loaded.meta.preprocessing_spec.image_size
    images, masks = [], []
    for block in data.datasets[split].iter_batches(batch_size=None, batch_format="numpy"):  # no Ray Data task
        for path, image in zip(block["path"], block["image"]):
            mask = read_opacity_mask(data_root, str(path), size)
            if mask is not None:
                images.append(np.asarray(image))
                masks.append(mask)
    if not masks:
        return None
    try:
        return score_localization(loaded, np.stack(images), np.stack(masks), batch_size)
    except ExplanationError:  # a model without a spatial map: the report says why
        return None
