"""Bootstrap intervals and calibration error against independent computations: a plain resampling loop with
scikit-learn's average_precision_score (same seed), the coverage of a known truth, an explicit loop over bins and a
closed form."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
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


def _clopper_pearson(successes: int, n: int, level: float = 0.95) -> list[float]:
    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="exact")
    return [100 * ci.low, 100 * ci.high]


def _plain_bootstrap(scores, targets, thresholds, resamples, seed, level=0.95):
    """Resample rows explicitly, recompute with numpy and sklearn, take np.percentile of the defined values; then the
    two stated exceptions: no interval on fewer than 10 images behind a value, scipy's exact interval for a recall
    or precision of 0 or 100 %."""
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
    called = scores >= thresholds
    per_class = []
    for k in range(c):
        positives, calls = int(targets[:, k].sum()), int(called[:, k].sum())
        hits = int((called[:, k] & (targets[:, k] == 1)).sum())
        row = {}
        for key, count in (("recall", positives), ("precision", calls), ("ap", positives)):
            row[f"{key}_ci"] = interval(arrays[key][:, k]) if count >= 10 else None
            if row[f"{key}_ci"] is not None and key != "ap" and hits in (0, count):
                row[f"{key}_ci"] = _clopper_pearson(hits, count, level)
        per_class.append(row)
    return per_class, interval(arrays["mAP"]) if n >= 10 else None


@pytest.mark.parametrize("chunk_cells", [10**9, 500])  # one block of resamples, and many blocks
def test_bootstrap_equals_a_plain_resampling_loop_with_sklearn(monkeypatch, chunk_cells: int) -> None:
    monkeypatch.setattr(bootstrap_module, "MAX_CHUNK_CELLS", chunk_cells)
    scores, targets = _data()
    targets[:, 3] = 0
    targets[:12, 3] = 1  # a rare class: some resamples have no positive (left out, not counted as 0)
    targets[:, 2] = 0
    targets[:5, 2] = 1  # too few positives for an interval
    scores[:, 1] = np.where(targets[:, 1] == 1, 0.95, scores[:, 1])  # recall 100 %: the exact interval
    thresholds = np.array([0.5, 0.4, 0.6, 0.5])
    got = bootstrap_intervals(scores, targets, thresholds, resamples=150, seed=11)
    want, want_map = _plain_bootstrap(scores, targets, thresholds, 150, 11)
    for g, w in zip(got["per_class"], want, strict=True):
        for key in ("recall_ci", "precision_ci", "ap_ci"):
            assert g[key] == pytest.approx(w[key], abs=1e-9), key
    assert got["mAP_ci"] == pytest.approx(want_map, abs=1e-9)
    assert got["per_class"][2]["recall_ci"] is None and got["per_class"][2]["ap_ci"] is None
    assert got["per_class"][1]["recall_ci"][1] == 100.0 and got["per_class"][1]["recall_ci"][0] < 100.0
    assert {k: got["method"][k] for k in ("name", "resamples", "level", "seed", "min_count")} == {
        "name": "percentile bootstrap over images", "resamples": 150, "level": 0.95, "seed": 11, "min_count": 10
    }  # fmt: skip


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (10, 10), (0, 57), (57, 57), (3, 3)])
def test_exact_interval_at_0_and_100_percent_equals_scipy(successes: int, n: int) -> None:
    assert bootstrap_module.exact_interval(successes, n) == pytest.approx(_clopper_pearson(successes, n), abs=1e-9)
    assert bootstrap_module.exact_interval(1, 3) is None  # in between: the bootstrap's business


def test_tiny_split_reads_as_too_few_not_as_certainty() -> None:
    """6 test images: the issue's "recall 0.0 (0.0-0.0)" and "AP 100.0 (100.0-100.0)" become n/a with the count."""
    from probmcl_med.core.metrics import multilabel_metrics
    from probmcl_med.evaluation.render import per_class_rows
    from probmcl_med.evaluation.statistics import add_statistics

    scores = np.array(
        [[0.9, 0.1, 0.2], [0.8, 0.2, 0.1], [0.1, 0.3, 0.1], [0.2, 0.4, 0.3], [0.7, 0.1, 0.2], [0.3, 0.2, 0.1]]
    )
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=float)
    metrics = add_statistics(multilabel_metrics(scores, targets, class_names=["a", "b", "c"]), scores, targets)
    assert metrics["summary"]["mAP_ci"] is None
    cells = {row[1]: row for _, row in per_class_rows(metrics, 0.8)}
    assert cells["a"][2] == "100.0 (n=3: too few for a CI)" and cells["a"][5] == "100.0 (n=3: too few for a CI)"
    assert cells["b"][2] == "0.0 (n=2: too few for a CI)"
    assert cells["b"][3] == "n/a"  # never called: precision is undefined, not 0
    assert cells["c"][2] == "n/a" and cells["c"][5] == "n/a"  # no positive


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
    called = int((scores[:, 2] >= 0.5).sum())
    assert called >= 10
    assert got["per_class"][2]["precision_ci"] == pytest.approx(_clopper_pearson(0, called))  # called, never right


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
