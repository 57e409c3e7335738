"""The monitoring statistics on plain arrays: intensity statistics, the OOD gate, the profile's storage
and size bound, the MMD test and the drift report. No model, no Ray: milliseconds each."""

import numpy as np
import pytest

from pneumo.models.checkpoints import read_profile_arrays
from pneumo.monitoring.drift import ObservationWindow, WindowData, drift_report, mmd_test
from pneumo.monitoring.features import INTENSITY_NAMES, Observations, intensity_statistics
from pneumo.monitoring.ood import Mahalanobis
from pneumo.monitoring.profile import PCA_COMPONENTS, REFERENCE_SAMPLE, ReferenceProfile, build_profile, write_profile

WIDTH = 64  # pre-logit feature width of the fake network


def films(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 1, 32, 32): a bright centre column and a bright bottom band over noise, like a chest."""
    rng = np.random.default_rng(seed)
    images = rng.normal(70, 12, size=(n, 1, 32, 32))
    images[:, :, :, 12:20] += 80
    images[:, :, 24:, :] += 60
    return np.clip(images, 0, 255).astype(np.uint8)


def observations(n: int, seed: int, shift: float = 0.0) -> Observations:
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(8, WIDTH))  # features live near an 8-dim subspace
    features = rng.normal(size=(n, 8)) @ mixing + 0.05 * rng.normal(size=(n, WIDTH)) + shift
    images = films(n, seed)
    return Observations(
        features.astype(np.float32), intensity_statistics(images), rng.beta(3, 1, size=n).astype(np.float32)
    )


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    return build_profile(observations(1500, 0), observations(1000, 1))


def test_intensity_statistics_describe_exposure_polarity_and_orientation():
    image = films(1, 0)
    stats = dict(zip(INTENSITY_NAMES, intensity_statistics(image)[0]))
    inverted = dict(zip(INTENSITY_NAMES, intensity_statistics(255 - image)[0]))
    upside_down = dict(zip(INTENSITY_NAMES, intensity_statistics(image[:, :, ::-1])[0]))
    blank = dict(zip(INTENSITY_NAMES, intensity_statistics(np.full((1, 1, 32, 32), 128, np.uint8))[0]))
    assert inverted["mean"] == pytest.approx(1 - stats["mean"], abs=1e-5)
    assert stats["top_minus_bottom"] < -0.1 and upside_down["top_minus_bottom"] == pytest.approx(
        -stats["top_minus_bottom"]
    )
    assert stats["centre_minus_sides"] > 0.1
    assert blank["std"] == blank["gradient"] == blank["laplacian"] == 0


def test_mahalanobis_ignores_column_units_and_grows_with_distance():
    rows = np.random.default_rng(0).normal(size=(500, 3))
    fitted = Mahalanobis.fit(rows)
    rescaled = Mahalanobis.fit(rows * [1, 1000, 0.01])
    probes = np.array([[0, 0, 0], [2, 0, 0], [5, 0, 0], [10, 0, 0]], float)
    distances = fitted.distances(probes)
    assert np.all(np.diff(distances) > 0) and distances[-1] > 8
    np.testing.assert_allclose(rescaled.distances(probes * [1, 1000, 0.01]), distances, rtol=1e-6)


def test_gate_refuses_about_one_percent_of_val_and_everything_far_away(profile):
    val = observations(1000, 1)
    assert np.mean(profile.ood_scores(val) > profile.gate.cutoff) == pytest.approx(0.01, abs=0.006)  # log-normal fit
    unseen = observations(2000, 2)
    assert np.mean(profile.ood_scores(unseen) > profile.gate.cutoff) < 0.03
    off_subspace = observations(100, 3, shift=3.0)  # features in directions the training films never used
    assert np.all(profile.ood_scores(off_subspace) > profile.gate.cutoff)
    inverted = Observations(
        unseen.features[:100], intensity_statistics(255 - films(100, 4)), unseen.probabilities[:100]
    )
    assert np.all(profile.ood_scores(inverted) > profile.gate.cutoff)


def test_profile_round_trips_through_the_checkpoint_folder_and_stays_bounded(profile, tmp_path):
    write_profile(tmp_path, profile)
    again = ReferenceProfile.from_arrays(read_profile_arrays(tmp_path))
    probe = observations(50, 5)
    np.testing.assert_allclose(again.ood_scores(probe), profile.ood_scores(probe), rtol=1e-6)
    assert again.gate.cutoff == profile.gate.cutoff and (again.n_train, again.n_val) == (1500, 1000)
    assert profile.features.shape == (REFERENCE_SAMPLE, min(PCA_COMPONENTS, WIDTH))
    big = build_profile(observations(5000, 6), observations(100, 7))
    assert len(big.probabilities) == REFERENCE_SAMPLE  # 5,000 films: the same bounded sample
    assert read_profile_arrays(tmp_path / "missing") is None


def test_mmd_test_keeps_its_level_and_finds_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 8))
    null_p = [mmd_test(reference, rng.normal(size=(60, 8)), permutations=100, seed=s)[1] for s in range(12)]
    assert sum(p < 0.05 for p in null_p) <= 2
    assert mmd_test(reference, rng.normal(size=(60, 8)) + 0.6, permutations=100)[1] < 0.02


def window_of(profile: ReferenceProfile, seen: Observations, ood: np.ndarray) -> WindowData:
    return WindowData(
        profile.project(seen.features)[0],
        seen.intensities,
        seen.probabilities,
        ood,
        np.linspace(1000.0, 1060.0, len(seen)),
    )


def test_drift_report_states_off_collecting_and_tested(profile):
    empty = ObservationWindow(200).snapshot()
    assert drift_report(None, empty, 200, 50, "no profile")["status"] == "off"
    same = observations(200, 8)
    few = drift_report(profile, window_of(profile, same.take(np.arange(10)), np.zeros(10, bool)), 200, 50)
    assert few["status"] == "collecting" and few["drift"] is None
    calm = drift_report(profile, window_of(profile, same, np.zeros(200, bool)), 200, 50)
    assert calm["status"] == "tested" and calm["drift"] is False, calm
    assert calm["window"]["span_s"] == pytest.approx(60.0)
    dark = Observations(same.features, intensity_statistics((films(200, 9) * 0.6).astype(np.uint8)), same.probabilities)
    flags = np.arange(200) < 30
    shifted = drift_report(profile, window_of(profile, dark, flags), 200, 50)
    assert shifted["drift"] is True and shifted["intensities"]["drift"] is True
    assert (
        shifted["intensities"]["statistics"]["mean"]["mean"]
        < shifted["intensities"]["statistics"]["mean"]["reference_mean"]
    )
    assert shifted["ood"]["rate"] == pytest.approx(0.15)


def test_window_keeps_only_the_most_recent_inputs():
    window = ObservationWindow(200)
    for start in range(0, 300, 50):
        rows = np.arange(start, start + 50, dtype=np.float32)
        window.add(rows[:, None].repeat(4, 1), np.zeros((50, len(INTENSITY_NAMES))), rows / 300, np.zeros(50, bool))
    snapshot = window.snapshot()
    assert len(snapshot) == 200 and snapshot.features[0, 0] == 100 and snapshot.features[-1, 0] == 299
    assert window.added == 300
