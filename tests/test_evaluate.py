"""Metrics against hand-computed cases, and the threshold policies reaching their targets."""

import numpy as np
import pytest

from pneumo.config import EvalConfig
from pneumo.evaluate import binary_metrics, choose_threshold, format_metrics_table


def test_metrics_match_a_hand_computed_case():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    probs = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])
    m = binary_metrics(labels, probs, threshold=0.5)
    # at 0.5: TP 3 (0.9, 0.8, 0.6), FN 1 (0.3), FP 1 (0.7), TN 3
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["sensitivity"] == pytest.approx(0.75) and m["specificity"] == pytest.approx(0.75)
    assert m["precision"] == pytest.approx(0.75) and m["f1"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.75)
    # AUROC: of 16 positive/negative pairs, two rank below the 0.7 negative (0.6 and 0.3) -> 14/16
    assert m["auroc"] == pytest.approx(14 / 16)


def rng_scores(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, np.clip(rng.normal(0.35 + 0.3 * labels, 0.15), 0, 1)


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
    score = lambda t: sum(binary_metrics(labels, probs, t)[k] for k in ("sensitivity", "specificity"))
    assert all(score(best) >= score(t) - 1e-9 for t in np.linspace(0.01, 0.99, 99))


def test_fixed_policy_and_table():
    labels, probs = rng_scores()
    assert choose_threshold(labels, probs, EvalConfig(threshold_policy="fixed", threshold=0.42)) == 0.42
    table = format_metrics_table(binary_metrics(labels, probs, 0.5))
    assert "auroc" in table and "sensitivity" in table and "TP" in table
