"""Per-class temperature scaling against a brute-force grid, scipy's bounded minimiser and a known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.metrics import average_precision_score

from probmcl_med.core.temperature import (
    T_MAX,
    T_MIN,
    binary_nll,
    calibrated_probabilities,
    fit_temperatures,
    threshold_on_calibrated_scale,
)
from probmcl_med.evaluation.calibration import expected_calibration_error


def miscalibrated(n: int, scales: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) logits that are ``scale`` times the true log-odds of their labels (over- or under-confident)."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 2.0, (n, len(scales))) - 1.0
    labels = (rng.random(true.shape) < 1.0 / (1.0 + np.exp(-true))).astype(np.float64)
    return true * np.asarray(scales), labels


def nll_one(z: np.ndarray, y: np.ndarray, t: float) -> float:
    """The mean binary NLL of one class at temperature t, written out plainly (an explicit loop over samples)."""
    total = 0.0
    for zi, yi in zip(z, y, strict=True):
        p = 1.0 / (1.0 + np.exp(-zi / t))
        total -= yi * np.log(p) + (1 - yi) * np.log(1 - p)
    return total / len(z)


def test_the_vectorised_nll_matches_an_explicit_loop() -> None:
    z, y = miscalibrated(50, [0.5, 3.0])
    temps = np.array([0.7, 2.5])
    ours = binary_nll(z, y, temps)
    for c in range(2):
        assert ours[c] == pytest.approx(nll_one(z[:, c], y[:, c], float(temps[c])), rel=1e-10)


def test_fit_matches_a_brute_force_grid_and_scipy() -> None:
    z, y = miscalibrated(400, [0.4, 1.0, 2.5, 6.0], seed=1)
    fitted = fit_temperatures(z, y)
    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 20001))
    for c in range(z.shape[1]):
        losses = binary_nll(z[:, [c]], y[:, [c]], grid[:, None])[:, 0]
        best = grid[int(np.argmin(losses))]
        assert fitted[c] == pytest.approx(best, rel=5e-4)  # the grid's step is 3e-4 in log T
        reference = minimize_scalar(
            lambda t, c=c: nll_one(z[:, c], y[:, c], t),
            bounds=(T_MIN, T_MAX),
            method="bounded",
            options={"xatol": 1e-9},
        )
        assert fitted[c] == pytest.approx(reference.x, rel=1e-5)


def test_fit_recovers_a_known_overconfidence_and_lowers_the_ece() -> None:
    z, y = miscalibrated(20000, [3.0, 0.5], seed=2)
    fitted = fit_temperatures(z, y)
    assert fitted == pytest.approx([3.0, 0.5], rel=0.08)
    before = [expected_calibration_error(1 / (1 + np.exp(-z[:, c])), y[:, c]) for c in range(2)]
    after_p = calibrated_probabilities(z, fitted)
    after = [expected_calibration_error(after_p[:, c], y[:, c]) for c in range(2)]
    assert all(a < 0.02 < b for a, b in zip(after, before, strict=True))


def test_calibration_keeps_the_calls_at_one_half_and_the_ranking() -> None:
    z, y = miscalibrated(300, [4.0, 0.3, 1.5], seed=3)
    p_raw = 1 / (1 + np.exp(-z))
    p_cal = calibrated_probabilities(z, fit_temperatures(z, y))
    assert ((p_raw >= 0.5) == (p_cal >= 0.5)).all()
    for c in range(3):
        assert average_precision_score(y[:, c], p_cal[:, c]) == pytest.approx(
            average_precision_score(y[:, c], p_raw[:, c])
        )


def test_a_class_with_one_label_value_keeps_temperature_one() -> None:
    z, y = miscalibrated(100, [2.0, 2.0, 2.0], seed=4)
    y[:, 0] = 0.0
    y[:, 1] = 1.0
    fitted = fit_temperatures(z, y)
    assert fitted[0] == 1.0 and fitted[1] == 1.0 and fitted[2] != 1.0


def test_a_raw_threshold_converts_to_the_calibrated_scale_exactly() -> None:
    z, _ = miscalibrated(500, [1.0, 1.0, 1.0], seed=5)
    temps = np.array([0.3, 1.0, 4.0])
    raw = np.array([0.12, 0.5, 0.93])
    converted = threshold_on_calibrated_scale(raw, temps)
    p_raw, p_cal = 1 / (1 + np.exp(-z)), calibrated_probabilities(z, temps)
    assert ((p_raw >= raw) == (p_cal >= converted)).all()
    assert converted[1] == pytest.approx(0.5)
    assert threshold_on_calibrated_scale(np.array([0.0, 1.0]), np.array([2.0, 2.0])).tolist() == [0.0, 1.0]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="must both be"):
        fit_temperatures(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        fit_temperatures(np.array([[np.inf]]), np.array([[1.0]]))
