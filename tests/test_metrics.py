"""Metrics against hand-computed cases, bootstrap intervals, and the threshold policies reaching
their targets on validation."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumo.config import EvalConfig
from pneumo.evaluation.evaluate import confident_mistakes, evaluate_predictions
from pneumo.evaluation.metrics import (
    SCORES,
    _resampled_scores,
    binary_metrics,
    bootstrap_intervals,
    choose_threshold,
    format_metrics_table,
    operating_points,
)
from pneumo.evaluation.prediction import Predictions
from pneumo.models.calibration import Calibration

LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0])
PROBS = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])


def test_metrics_match_a_hand_computed_case():
    m = binary_metrics(LABELS, PROBS, threshold=0.5)
    # at 0.5: TP 3 (0.9, 0.8, 0.6), FN 1 (0.3), FP 1 (0.7), TN 3
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75) and m["f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75) and m["balanced_accuracy"] == pytest.approx(0.75)
    # AUROC: of 16 positive/negative pairs, two rank below the 0.7 negative (0.6 and 0.3) -> 14/16
    assert m["auroc"] == pytest.approx(14 / 16)
    # AUPRC (average precision): precision at each positive's rank: 1/1, 2/2, 3/4, 4/5 -> mean
    assert m["auprc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)


def test_metrics_of_an_unbalanced_hand_computed_case():
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    probs = np.array([0.95, 0.9, 0.85, 0.4, 0.35, 0.3, 0.5, 0.1])
    m = binary_metrics(labels, probs, threshold=0.45)
    # TP 3, FN 3, FP 1 (0.5), TN 1
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 3, 1, 1)
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(0.5)
    assert m["balanced_accuracy"] == pytest.approx(0.5) and m["accuracy"] == pytest.approx(4 / 8)
    assert m["precision"] == pytest.approx(3 / 4) and m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 3))


def rng_scores(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_images():
    small_labels, small_probs = rng_scores(n=100)
    large_labels, large_probs = rng_scores(n=1600)
    small = bootstrap_intervals(small_labels, small_probs, 0.5, n_resamples=300)
    large = bootstrap_intervals(large_labels, large_probs, 0.5, n_resamples=300)
    assert set(small) == set(SCORES)
    point = binary_metrics(large_labels, large_probs, 0.5)
    for key in SCORES:
        assert large[key][0] <= point[key] <= large[key][1], key
        assert large[key][1] - large[key][0] < small[key][1] - small[key][0], key
    # the spread of a proportion over n images is about 2 * 1.96 * sqrt(p (1 - p) / n)
    n_positive = int(large_labels.sum())
    expected = 2 * 1.96 * np.sqrt(point["sensitivity"] * (1 - point["sensitivity"]) / n_positive)
    assert large["sensitivity"][1] - large["sensitivity"][0] == pytest.approx(expected, rel=0.25)


def test_resampled_scores_equal_scikit_learn_row_by_row():
    """The bootstrap scores resamples as arrays; each row must give binary_metrics' (scikit-learn's)
    values, with tied scores (rounded probabilities), a one-class row and duplicated images."""
    labels, probs = rng_scores(n=120, seed=5)
    rng = np.random.default_rng(1)
    rows = rng.integers(0, len(labels), (30, len(labels)))
    row_labels, row_probs = labels[rows], np.round(probs[rows], 1)
    row_labels[0] = 1  # one class only: ranking scores undefined
    scores = _resampled_scores(row_labels, row_probs, 0.5)
    for i in range(len(rows)):
        expected = binary_metrics(row_labels[i], row_probs[i], 0.5)
        for key in SCORES:
            np.testing.assert_allclose(scores[key][i], expected[key], rtol=1e-12, err_msg=f"row {i} {key}")


def test_bootstrap_is_repeatable_for_a_seed():
    labels, probs = rng_scores(n=200)
    assert bootstrap_intervals(labels, probs, 0.5, 50, seed=3) == bootstrap_intervals(labels, probs, 0.5, 50, seed=3)


def test_sensitivity_policy_reaches_target():
    labels, probs = rng_scores()
    threshold = choose_threshold(labels, probs, EvalConfig(threshold_policy="sensitivity", target_sensitivity=0.95))
    assert binary_metrics(labels, probs, threshold)["sensitivity"] >= 0.95


def test_specificity_policy_reaches_target():
    labels, probs = rng_scores()
    threshold = choose_threshold(labels, probs, EvalConfig(threshold_policy="specificity", target_specificity=0.9))
    assert binary_metrics(labels, probs, threshold)["specificity"] >= 0.9


def test_youden_maximises_sensitivity_plus_specificity():
    labels, probs = rng_scores()
    best = choose_threshold(labels, probs, EvalConfig(threshold_policy="youden"))
    thresholds = np.append(np.linspace(0.01, 0.99, 99), best)
    predicted = probs[None, :] >= thresholds[:, None]  # one row per threshold (pneumonia when >=)
    score = (predicted & (labels == 1)).sum(1) / (labels == 1).sum() + (~predicted & (labels == 0)).sum(1) / (
        labels == 0
    ).sum()
    assert np.all(score[-1] >= score[:-1] - 1e-9)
    metrics = binary_metrics(labels, probs, best)
    assert metrics["sensitivity"] + metrics["specificity"] == pytest.approx(score[-1])


def test_fixed_policy_and_table():
    labels, probs = rng_scores()
    assert choose_threshold(labels, probs, EvalConfig(threshold_policy="fixed", threshold=0.42)) == 0.42
    metrics = binary_metrics(labels, probs, 0.5)
    table = format_metrics_table(metrics, {"auroc": (0.81, 0.93)})
    assert "auroc" in table and "[0.810, 0.930]" in table and "TP" in table


def test_operating_points_reach_their_targets_on_validation():
    cfg = EvalConfig(target_sensitivity=0.97, target_specificity=0.95)
    val_labels, val_probs = rng_scores(seed=1)
    test_labels, test_probs = rng_scores(seed=2)
    points = {p.policy: p for p in operating_points(val_labels, val_probs, test_labels, test_probs, cfg)}
    assert set(points) == {"fixed", "youden", "sensitivity", "specificity"}
    assert points["sensitivity"].val["sensitivity"] >= 0.97
    assert points["specificity"].val["specificity"] >= 0.95
    assert points["fixed"].threshold == cfg.threshold
    assert points["sensitivity"].threshold < points["youden"].threshold < points["specificity"].threshold
    assert points["youden"].test == binary_metrics(test_labels, test_probs, points["youden"].threshold)


def logits_of(labels, seed, scale=1.0):
    """Logits of a calibrated model (P = sigmoid(logit)) times `scale`: scale > 1 is overconfident."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 2.0, len(labels))
    labels = (rng.random(len(labels)) < 1 / (1 + np.exp(-true_logits))).astype(int)
    return labels, scale * true_logits


def test_evaluation_fits_calibration_and_threshold_on_validation():
    val_labels, val_logits = logits_of(np.zeros(3000), seed=0, scale=4.0)
    test_labels, test_logits = logits_of(np.zeros(3000), seed=1, scale=4.0)
    val, test = Predictions(val_labels, val_logits, []), Predictions(test_labels, test_logits, [])
    evaluation = evaluate_predictions(val, test, EvalConfig(bootstrap_samples=20))
    assert evaluation.calibration.temperature == pytest.approx(4.0, rel=0.15)
    assert abs(evaluation.calibration.bias) < 0.15, "default Platt scaling finds no prior shift here"
    assert evaluation.metrics["ece"] < evaluation.metrics["ece_uncalibrated"] / 2
    assert evaluation.metrics["auroc"] == pytest.approx(roc_auc_score(test_labels, test_logits))  # ranking kept
    assert len(evaluation.operating_points) == 4 and set(evaluation.intervals) == set(SCORES)


def test_stored_threshold_and_temperature_are_used_as_given():
    labels, logits = logits_of(np.zeros(500), seed=2)
    test = Predictions(labels, logits, [])
    stored = Calibration(2.0, 0.5)
    evaluation = evaluate_predictions(None, test, EvalConfig(bootstrap_samples=0), threshold=0.3, calibration=stored)
    assert (evaluation.threshold, evaluation.calibration, evaluation.intervals) == (0.3, stored, {})
    np.testing.assert_allclose(evaluation.test_probabilities, 1 / (1 + np.exp(-(logits / 2.0 + 0.5))))
    assert evaluation.operating_points == []
    with pytest.raises(ValueError, match="validation"):
        evaluate_predictions(None, test, EvalConfig())


def test_confident_mistakes_put_missed_pneumonia_first():
    labels = np.array([1, 1, 1, 0, 0, 0])
    probs = np.array([0.1, 0.4, 0.9, 0.95, 0.6, 0.2])
    # missed pneumonia: 0.1 (most confident), 0.4; false alarms: 0.95, then 0.6
    assert list(confident_mistakes(labels, probs, 0.5, limit=10)) == [0, 1, 3, 4]
    assert list(confident_mistakes(labels, probs, 0.5, limit=3)) == [0, 1, 3]
