"""Every picture and the self-contained HTML report are written and hold what they claim."""

import base64
import re

import numpy as np
import pytest
from PIL import Image

from pneumo.config import DataConfig, EvalConfig
from pneumo.evaluation.evaluate import evaluate_predictions
from pneumo.evaluation.prediction import Predictions, images_at
from pneumo.evaluation.report.baselines import PUBLISHED, resolve_baseline_dataset
from pneumo.evaluation.report.build import REPORT_FILE, write_report
from pneumo.evaluation.report.html import ReportContent

PICTURES = ("roc.png", "pr.png", "confusion.png", "reliability.png", "training_curves.png", "mistakes.png")


@pytest.fixture(scope="module")
def evaluation():
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 2, n)
        return Predictions(labels, rng.normal(2.5 * labels - 1.2, 1.5), [f"img{i}.jpeg" for i in range(n)])

    return evaluate_predictions(split(300), split(300), EvalConfig(bootstrap_samples=100))


def content(evaluation, baseline_dataset="kaggle"):
    return ReportContent(
        title="unit <report>",
        evaluation=evaluation,
        config_yaml="name: unit\nmodel:\n  name: x\n",
        data_summary={"counts": {"train": {"NORMAL": 10, "PNEUMONIA": 30}}, "fingerprint": "abc123"},
        model={"registered model": "models:/pneumo-pneumonia/7 (aliases: champion)"},
        baseline_dataset=baseline_dataset,
        threshold_policy="youden",
    )


HISTORY = {
    "train_loss": [(0, 0.7), (1, 0.5), (2, 0.4)],
    "val_loss": [(0, 0.6), (1, 0.5), (2, 0.45)],
    "val_auroc": [(0, 0.7), (1, 0.8), (2, 0.85)],
    "lr": [(0, 1e-3), (1, 5e-4), (2, 0.0)],
}


def test_every_picture_and_the_report_are_written(tmp_path, evaluation):
    films = [np.full((1, 32, 32), value, np.uint8) for value in (40, 120, 200)]
    mistakes = [(film, label, p) for film, label, p in zip(films, (1, 1, 0), (0.05, 0.2, 0.97))]
    report = write_report(content(evaluation), HISTORY, mistakes, tmp_path)

    assert report == tmp_path / REPORT_FILE
    for name in PICTURES:
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG" and picture.size[0] > 300 and picture.size[1] > 200, name
            assert len(np.unique(np.asarray(picture.convert("L")))) > 10, f"{name} is blank"
    page = report.read_text()
    inlined = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(inlined) == len(PICTURES), "pictures are inlined, so the page needs no other file"
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in inlined)
    assert "src='http" not in page and "<script" not in page
    assert "unit &lt;report&gt;" in page, "text is escaped"
    metrics = evaluation.metrics
    assert f"{metrics['auroc']:.3f}" in page and f"{evaluation.intervals['auroc'][0]:.3f}" in page
    assert "models:/pneumo-pneumonia/7" in page and "abc123" in page and "name: unit" in page
    assert "Operating points" in page and 'class="chosen"' in page
    assert "Kermany et al." in page and "0.968" in page


def test_report_without_baselines_history_or_mistakes(tmp_path, evaluation):
    report = write_report(content(evaluation, baseline_dataset="none"), {}, [], tmp_path)
    page = report.read_text()
    assert "No published figures apply" in page
    assert not (tmp_path / "training_curves.png").exists()
    assert (tmp_path / "mistakes.png").stat().st_size > 0


def test_pneumoniamnist_baselines_name_their_source(tmp_path, evaluation):
    page = write_report(content(evaluation, "pneumoniamnist"), {}, [], tmp_path).read_text()
    for published in PUBLISHED["pneumoniamnist"]:
        assert published.method in page
    assert "MedMNIST v2" in page and "0.991" in page


def test_auto_baselines_skip_synthetic_data(tmp_path, synthetic_root):
    assert resolve_baseline_dataset("auto", DataConfig(path=str(synthetic_root))) == "none"
    (tmp_path / "chest_xray").mkdir()
    assert resolve_baseline_dataset("auto", DataConfig(path=str(tmp_path / "chest_xray"))) == "kaggle"
    assert resolve_baseline_dataset("pneumoniamnist", DataConfig(path=str(synthetic_root))) == "pneumoniamnist"


@pytest.mark.slow
def test_images_at_finds_the_mistakes_images_across_blocks(ray_session):
    images = np.arange(40 * 4 * 4, dtype=np.uint8).reshape(40, 1, 4, 4)
    split = ray_session.data.from_items(
        [{"path": f"film{i}.jpeg", "image": images[i]} for i in range(40)], override_num_blocks=4
    ).materialize()
    found = images_at(split, ["film3.jpeg", "film37.jpeg", "absent.jpeg"])
    assert sorted(found) == ["film3.jpeg", "film37.jpeg"]
    np.testing.assert_array_equal(found["film37.jpeg"], images[37])
    assert images_at(split, []) == {}
