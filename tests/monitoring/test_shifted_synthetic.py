"""`pneumo data synth` imitating another hospital: each acquisition option changes the films the way
its name says, the default set stays byte-identical, and the prevalence is honoured."""

import numpy as np
import pytest

from pneumo.data.synthetic import Acquisition, plan_dataset, render_chest_xray, render_chest_xray_and_opacity
from pneumo.monitoring.features import INTENSITY_NAMES, intensity_statistics

PLAN = plan_dataset(100, seed=3)


def stats(acquisition: Acquisition) -> dict[str, float]:
    films = np.stack([render_chest_xray_and_opacity(image, 3, 64, acquisition)[0] for image in PLAN[:6]])[:, None]
    return dict(zip(INTENSITY_NAMES, intensity_statistics(films).mean(axis=0)))


def test_default_acquisition_leaves_the_films_unchanged():
    for image in PLAN[:3]:
        assert np.array_equal(render_chest_xray(image, 3, 64), render_chest_xray_and_opacity(image, 3, 64)[0])


@pytest.mark.parametrize(
    "acquisition, statistic, direction",
    [
        (Acquisition(exposure=-0.2), "mean", -1),
        (Acquisition(noise=0.08), "laplacian", +1),
        (Acquisition(blur_px=2.5), "gradient", -1),
        (Acquisition(resolution=0.25), "laplacian", -1),
        (Acquisition(portable=True), "p50", +1),
        (Acquisition(inverted=True), "top_minus_bottom", +1),
    ],
)
def test_each_acquisition_moves_its_statistic(acquisition, statistic, direction):
    base, shifted = stats(Acquisition())[statistic], stats(acquisition)[statistic]
    assert direction * (shifted - base) > 0.1 * max(abs(base), 0.01), (base, shifted)


def test_prevalence_is_the_share_of_pneumonia_films():
    plan = plan_dataset(400, seed=0, pneumonia_share=0.3)
    assert np.mean([image.true_label == "PNEUMONIA" for image in plan]) == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError, match="pneumonia_share"):
        plan_dataset(400, pneumonia_share=0.99)
