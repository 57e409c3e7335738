"""`pneumo eval` on a synthetic set: map overlays in report.html and localization scores against
the drawn opacities, logged to the eval run (conftest's smoke_run model)."""

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pneumo.data.synthetic import OPACITY_MASKS_DIR
from pneumo.jobs.evaluate import evaluate_model

pytestmark = pytest.mark.slow


def test_eval_on_a_synthetic_set_shows_maps_and_scores_them(smoke_run, tmp_path):
    outcome = evaluate_model(smoke_run.champion_uri, smoke_run.cfg, "test", tmp_path / "report")
    found = outcome.localization
    drawn = list((Path(smoke_run.cfg.data.path) / OPACITY_MASKS_DIR / "test").glob("*/*.png"))
    assert found is not None and found.n_films == len(drawn) > 0  # every test film with a drawn opacity
    assert 0 <= found.pointing_game <= 1 and 0 <= found.mass_inside <= 1 and 0 < found.area_fraction < 0.5
    metrics = MlflowClient(smoke_run.cfg.mlflow.tracking_uri).get_run(outcome.mlflow_run_id).data.metrics
    assert metrics["test_cam_pointing_game"] == pytest.approx(found.pointing_game)
    assert metrics["test_cam_area_fraction"] == pytest.approx(found.area_fraction)
    assert metrics["test_cam_pointing_game_ci_low"] <= found.pointing_game <= metrics["test_cam_pointing_game_ci_high"]
    assert 0 <= found.perfect_map_pointing_game <= 1 and found.target_layer  # a perfect map at the layer's cells
    assert metrics["test_cam_perfect_map_pointing_game"] == pytest.approx(found.perfect_map_pointing_game)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Where the model looked" in page and "pointing game" in page and "random baseline" in page
    assert "Grad-CAM&#x27;s ceiling at the layer" in page
    assert (tmp_path / "report" / "cam_mistakes.png").is_file() or (tmp_path / "report" / "cam_correct.png").is_file()
