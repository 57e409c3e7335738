"""The learning-rate schedule as a pure function: linear warmup, then cosine to 0 or flat."""

import math

import pytest

from pneumo.training.train import lr_factor


def test_warmup_rises_linearly_to_one():
    assert [lr_factor(step, 100, 4, "cosine") for step in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_starts_at_one_halves_midway_and_ends_at_zero():
    assert lr_factor(10, 110, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(60, 110, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(110, 110, 10, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(500, 110, 10, "cosine") == pytest.approx(0.0, abs=1e-12), "past the end it stays at 0"
    steps = [lr_factor(step, 110, 10, "cosine") for step in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:])), "decays monotonically"
    assert lr_factor(35, 110, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_constant_stays_at_one_after_warmup_and_no_warmup_starts_at_full_rate():
    assert lr_factor(0, 50, 5, "constant") == pytest.approx(0.2)
    assert [lr_factor(step, 50, 5, "constant") for step in (5, 25, 50)] == [1.0, 1.0, 1.0]
    assert lr_factor(0, 50, 0, "cosine") == 1.0
