"""`pneumo eval` on a synthetic set: map overlays in report.html and localization scores against
the drawn opacities, logged to the eval run (conftest's smoke_run model)."""

import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pneumo.data.synthetic import OPACITY_MASKS_DIR
from pneumo.jobs.evaluate import evaluate_model

pytestmark = pytest.mark.slow


def wilson_interval(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95% Wilson score interval, written out (Wilson 1927) rather than read from scipy."""
    share = hits / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_eval_on_a_synthetic_set_shows_maps_and_scores_them(smoke_run, tmp_path):
    outcome = evaluate_model(smoke_run.champion_uri, smoke_run.cfg, "test", tmp_path / "report")
    found = outcome.localization
    drawn = list((Path(smoke_run.cfg.data.path) / OPACITY_MASKS_DIR / "test").glob("*/*.png"))
    assert found is not None and found.n_films == len(drawn) > 0  # every test film with a drawn opacity
    hits = round(found.pointing_game * found.n_films)
    assert found.pointing_game == pytest.approx(hits / found.n_films), "a share of whole films"
    low, high = wilson_interval(hits, found.n_films)
    assert found.pointing_game_ci == pytest.approx((low, high), abs=1e-9)
    drawn_area = np.mean([np.asarray(Image.open(mask).convert("L")) > 127 for mask in drawn])
    assert found.area_fraction == pytest.approx(drawn_area, abs=0.02), "the masks' own share, at the model's size"
    metrics = MlflowClient(smoke_run.cfg.mlflow.tracking_uri).get_run(outcome.mlflow_run_id).data.metrics
    assert metrics["test_cam_pointing_game"] == pytest.approx(found.pointing_game)
    assert metrics["test_cam_area_fraction"] == pytest.approx(found.area_fraction)
    assert metrics["test_cam_pointing_game_ci_low"] <= found.pointing_game <= metrics["test_cam_pointing_game_ci_high"]
    assert found.target_layer and found.map_size[0] >= 6  # the layer rule's minimum map
    assert metrics["test_cam_perfect_map_pointing_game"] == pytest.approx(found.perfect_map_pointing_game)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Where the model looked" in page and "pointing game" in page and "random baseline" in page
    assert "Grad-CAM&#x27;s ceiling at the layer" in page
    assert (tmp_path / "report" / "cam_mistakes.png").is_file() or (tmp_path / "report" / "cam_correct.png").is_file()
