"""Reliability bins and ECE against hand-computed cases; recalibration fitted on val lowers test ECE."""

import numpy as np
import pytest

from pneumo.models.calibration import Calibration, expected_calibration_error, fit_calibration, reliability_bins


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


def miscalibrated(n, seed, scale, shift=0.0):
    """Labels drawn from sigmoid(true logit); the model outputs scale * true logit + shift."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < Calibration().probabilities(true_logits)).astype(int)
    return labels, scale * true_logits + shift


@pytest.mark.parametrize("scale", [0.3, 5.0])  # underconfident and overconfident models
def test_temperature_scaling_fitted_on_validation_lowers_test_ece(scale):
    val_labels, val_logits = miscalibrated(4000, seed=0, scale=scale)
    test_labels, test_logits = miscalibrated(4000, seed=1, scale=scale)
    fitted = fit_calibration(val_labels, val_logits, "temperature")
    assert fitted.temperature == pytest.approx(scale, rel=0.15) and fitted.bias == 0.0
    before = expected_calibration_error(test_labels, Calibration().probabilities(test_logits))
    after = expected_calibration_error(test_labels, fitted.probabilities(test_logits))
    assert after < before / 2 and after < 0.03


def test_platt_scaling_also_removes_a_prior_shift():
    # a class-balanced loss shifts logits; temperature alone cannot undo a shift, Platt can
    val_labels, val_logits = miscalibrated(4000, seed=0, scale=2.0, shift=-1.5)
    test_labels, test_logits = miscalibrated(4000, seed=1, scale=2.0, shift=-1.5)
    platt = fit_calibration(val_labels, val_logits, "platt")
    temperature = fit_calibration(val_labels, val_logits, "temperature")
    assert platt.temperature == pytest.approx(2.0, rel=0.15) and platt.bias == pytest.approx(0.75, abs=0.15)
    platt_ece = expected_calibration_error(test_labels, platt.probabilities(test_logits))
    assert platt_ece < 0.03
    assert platt_ece < expected_calibration_error(test_labels, temperature.probabilities(test_logits))


def test_none_and_one_class_validation_keep_the_model_scale():
    labels, logits = miscalibrated(100, seed=0, scale=3.0)
    assert fit_calibration(labels, logits, "none") == Calibration()
    assert fit_calibration(np.ones(10), np.linspace(-1, 3, 10), "platt") == Calibration()
