"""Bootstrap intervals and calibration error against independent computations: a plain resampling loop with
scikit-learn's average_precision_score (same seed), the coverage of a known truth, an explicit loop over bins and a
closed form."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from probmcl_med.evaluation import bootstrap as bootstrap_module
from probmcl_med.evaluation.bootstrap import bootstrap_intervals
from probmcl_med.evaluation.calibration import calibration_summary, expected_calibration_error


def _data(n: int = 80, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(float)
    targets[:3, :] = 1
    scores = np.clip(rng.random((n, c)) * 0.7 + 0.3 * targets, 0, 1).round(1)  # ties on purpose
    return scores, targets


def _plain_bootstrap(scores, targets, thresholds, resamples, seed, level=0.95):
    """Resample rows explicitly, recompute with numpy and sklearn, take np.percentile of the defined values."""
    n, c = scores.shape
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = {"recall": [], "precision": [], "ap": [], "mAP": []}
    for idx in draws:
        s, t = scores[idx], targets[idx]
        called = s >= thresholds
        rec, prec, ap = [], [], []
        for k in range(c):
            positives, predicted = t[:, k].sum(), called[:, k].sum()
            tp = (called[:, k] & (t[:, k] == 1)).sum()
            rec.append(tp / positives if positives else np.nan)
            prec.append(tp / predicted if predicted else np.nan)
            ap.append(average_precision_score(t[:, k], s[:, k]) if positives else np.nan)
        values["recall"].append(rec)
        values["precision"].append(prec)
        values["ap"].append(ap)
        values["mAP"].append(np.nanmean(ap))
    tail = 100 * (1 - level) / 2

    def interval(v):
        v = np.asarray(v, float)
        v = v[np.isfinite(v)]
        return None if v.size == 0 else list(100 * np.percentile(v, [tail, 100 - tail]))

    arrays = {k: np.array(v) for k, v in values.items()}
    per_class = [{f"{key}_ci": interval(arrays[key][:, k]) for key in ("recall", "precision", "ap")} for k in range(c)]
    return per_class, interval(arrays["mAP"])


@pytest.mark.parametrize("chunk_cells", [10**9, 500])  # one block of resamples, and many blocks
def test_bootstrap_equals_a_plain_resampling_loop_with_sklearn(monkeypatch, chunk_cells: int) -> None:
    monkeypatch.setattr(bootstrap_module, "MAX_CHUNK_CELLS", chunk_cells)
    scores, targets = _data()
    targets[:, 3] = 0
    targets[:2, 3] = 1  # a rare class: some resamples have no positive (left out, not counted as 0)
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    got = bootstrap_intervals(scores, targets, thresholds, resamples=150, seed=11)
    want, want_map = _plain_bootstrap(scores, targets, thresholds, 150, 11)
    for g, w in zip(got["per_class"], want, strict=True):
        for key in ("recall_ci", "precision_ci", "ap_ci"):
            assert g[key] == pytest.approx(w[key], abs=1e-9), key
    assert got["mAP_ci"] == pytest.approx(want_map, abs=1e-9)
    assert got["method"] == {"name": "percentile bootstrap over images", "resamples": 150, "level": 0.95, "seed": 11}


def test_bootstrap_interval_covers_a_known_recall_and_precision() -> None:
    """Data with a known truth: recall 0.7, precision 0.7 * 0.3 / (0.7 * 0.3 + 0.1 * 0.7) = 0.75. A 95 % interval
    should hold the truth in about 95 % of independent datasets."""
    rng = np.random.default_rng(5)
    true_recall, true_precision = 0.7, 0.21 / 0.28
    hits_r = hits_p = 0
    trials = 150
    for _ in range(trials):
        y = (rng.random((300, 1)) < 0.3).astype(float)
        called = np.where(y == 1, rng.random(y.shape) < 0.7, rng.random(y.shape) < 0.1)
        scores = np.where(called, 0.9, 0.1)
        ci = bootstrap_intervals(scores, y, 0.5, resamples=300, seed=int(rng.integers(1 << 30)))["per_class"][0]
        hits_r += ci["recall_ci"][0] <= 100 * true_recall <= ci["recall_ci"][1]
        hits_p += ci["precision_ci"][0] <= 100 * true_precision <= ci["precision_ci"][1]
    assert 0.88 <= hits_r / trials <= 0.995
    assert 0.88 <= hits_p / trials <= 0.995


def test_no_positive_class_has_no_recall_or_ap_interval() -> None:
    scores, targets = _data()
    targets[:, 2] = 0
    got = bootstrap_intervals(scores, targets, 0.5, resamples=50)
    assert got["per_class"][2]["recall_ci"] is None and got["per_class"][2]["ap_ci"] is None
    assert got["per_class"][2]["precision_ci"] == [0.0, 0.0]  # called, never right


def _ece_by_hand(p: list[float], y: list[float], bins: int = 10) -> float:
    total = 0.0
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        inside = [(pi, yi) for pi, yi in zip(p, y, strict=True) if lo <= pi < hi or (m == bins - 1 and pi == 1.0)]
        if inside:
            confidence = sum(pi for pi, _ in inside) / len(inside)
            rate = sum(yi for _, yi in inside) / len(inside)
            total += len(inside) / len(p) * abs(rate - confidence)
    return total


def test_ece_against_an_explicit_loop_and_a_closed_form() -> None:
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.random((200, 3)), [[0.0, 0.5, 1.0], [0.25, 0.75, 0.95]]])
    targets = (rng.random(scores.shape) < scores).astype(float)
    summary = calibration_summary(scores, targets)
    for k in range(3):
        assert summary["per_class_ece"][k] == pytest.approx(100 * _ece_by_hand(list(scores[:, k]), list(targets[:, k])))
    assert summary["ece"] == pytest.approx(100 * _ece_by_hand(list(scores.ravel()), list(targets.ravel())))
    assert sum(b["count"] for b in summary["reliability"]) == scores.size
    # closed form: every score 0.8 and half the labels positive: ECE = |0.5 - 0.8| = 0.3
    assert expected_calibration_error(np.full(10, 0.8), np.array([1, 0] * 5, float)) == pytest.approx(0.3)
