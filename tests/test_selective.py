"""AUROC and risk-coverage of "which predictions are wrong" (issue 25 item 4) against scikit-learn and a slow
explicit loop over random tie orders."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from probmcl_med.evaluation.selective import auroc, risk_at_coverage, risk_coverage, weight_entropy


@pytest.mark.parametrize("levels", [None, 4])
def test_auroc_equals_scikit_learn_with_and_without_ties(levels: int | None) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 200))
        doubt = rng.normal(size=n)
        if levels:
            doubt = np.round(doubt * levels) / levels  # many ties
        wrong = rng.random(n) < rng.uniform(0.05, 0.6)
        if wrong.all() or not wrong.any():
            continue
        assert auroc(doubt, wrong) == pytest.approx(roc_auc_score(wrong, doubt), abs=1e-12)


def test_auroc_undefined_without_both_outcomes() -> None:
    assert math.isnan(auroc(np.arange(4.0), np.zeros(4, dtype=bool)))
    assert math.isnan(auroc(np.arange(4.0), np.ones(4, dtype=bool)))


def test_risk_coverage_is_the_expectation_over_random_tie_orders() -> None:
    rng = np.random.default_rng(1)
    doubt = rng.integers(0, 5, size=40).astype(float)  # heavy ties
    wrong = rng.random(40) < 0.3
    coverage, risk = risk_coverage(doubt, wrong)
    # slow reference: average the plain curve over many random orders of the tied scores
    trials = 20000
    total = np.zeros(40)
    for _ in range(trials):
        order = np.lexsort((rng.random(40), doubt))  # by doubt, ties in random order
        total += np.cumsum(wrong[order]) / np.arange(1, 41)
    np.testing.assert_allclose(risk, total / trials, atol=0.01)
    np.testing.assert_allclose(coverage, np.arange(1, 41) / 40)
    assert risk[-1] == pytest.approx(wrong.mean())


def test_risk_at_coverage_keeps_the_least_doubted() -> None:
    doubt = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    wrong = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    assert risk_at_coverage(doubt, wrong, 0.8) == 0.0
    assert risk_at_coverage(doubt, wrong, 0.9) == pytest.approx(1 / 9)
    assert risk_at_coverage(doubt, wrong, 1.0) == pytest.approx(0.2)
    # a useless score (every doubt equal) keeps the base rate at every coverage
    assert risk_at_coverage(np.zeros(10), wrong, 0.5) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        risk_at_coverage(doubt, wrong, 0.0)


def test_weight_entropy() -> None:
    w = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(weight_entropy(w), [0.0, math.log(2), math.log(3)], atol=1e-12)
