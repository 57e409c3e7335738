"""Reliability bins and ECE against hand-computed cases; temperature scaling lowers ECE."""

import numpy as np
import pytest

from pneumo.calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability_bins


def test_ece_of_a_hand_computed_case():
    # two bins (0-0.5, 0.5-1): [0.2, 0.4] with labels [0, 1] -> mean 0.3, observed 0.5, gap 0.2
    #                          [0.8, 0.8, 1.0] with labels [1, 1, 0] -> mean 0.8667, observed 0.6667, gap 0.2
    labels = np.array([0, 1, 1, 1, 0])
    probs = np.array([0.2, 0.4, 0.8, 0.8, 1.0])
    bins = reliability_bins(labels, probs, n_bins=2)
    assert list(bins.counts) == [2, 3]
    assert bins.mean_predicted == pytest.approx([0.3, 2.6 / 3])
    assert bins.observed_rate == pytest.approx([0.5, 2 / 3])
    assert bins.expected_calibration_error == pytest.approx(2 / 5 * 0.2 + 3 / 5 * 0.2)


def test_empty_bins_are_skipped_and_perfect_calibration_scores_zero():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([0.0, 0.0, 1.0, 1.0])
    bins = reliability_bins(labels, probs, n_bins=10)
    assert bins.counts.sum() == 4 and np.isnan(bins.observed_rate[5])
    assert expected_calibration_error(labels, probs, 10) == 0.0


def overconfident(n, seed, scale):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < apply_temperature(true_logits)).astype(int)
    return labels, scale * true_logits


@pytest.mark.parametrize("scale", [0.3, 5.0])  # underconfident and overconfident models
def test_temperature_scaling_fitted_on_validation_lowers_test_ece(scale):
    val_labels, val_logits = overconfident(4000, seed=0, scale=scale)
    test_labels, test_logits = overconfident(4000, seed=1, scale=scale)
    temperature = fit_temperature(val_labels, val_logits)
    assert temperature == pytest.approx(scale, rel=0.15)
    before = expected_calibration_error(test_labels, apply_temperature(test_logits))
    after = expected_calibration_error(test_labels, apply_temperature(test_logits, temperature))
    assert after < before / 2 and after < 0.03


def test_one_class_validation_keeps_the_model_scale():
    assert fit_temperature(np.ones(10), np.linspace(-1, 3, 10)) == 1.0
