"""95 % bootstrap confidence intervals for per-class recall, precision, AP and for mAP.

A test split of a few hundred images measures a class with fifty positives to within several points; the interval
says how many. Method: the percentile bootstrap over images (Efron & Tibshirani, *An Introduction to the Bootstrap*,
1993, ch. 13). Each resample draws N images with replacement, ``numpy.random.default_rng(seed).integers(0, N,
size=(resamples, N))`` row by row, and recomputes every metric on it with the thresholds fixed; the interval is the
(2.5, 97.5) percentiles of the resampled values (``numpy.percentile``, linear interpolation).

A resample is represented by how often it draws each image (weights w, summing to N), so the metrics need no copy
of the data: at threshold t, TP_c = sum_i w_i y_ic [s_ic >= t_c], and AP_c is sklearn's ``average_precision_score``
of the resampled set, sum over positives of w_i * precision at the end of the sample's tie group / sum_i w_i y_ic
(a drawn duplicate ties with itself, so grouping ties handles duplicates exactly as sklearn does).

Undefined values are left out of a class's percentiles, not counted as 0: recall and AP in a resample without a
positive of the class, precision in a resample where the class is never predicted. mAP averages the AP of the
classes that have a positive in that resample (the point estimate's rule, :mod:`probmcl_med.core.metrics`).

Two cases where the percentile bootstrap reads as certainty, handled explicitly:

- **Too few images behind a value.** A class's recall and AP rest on its positives, its precision on the images it
  is called in; with fewer than :data:`MIN_COUNT` of them a resample holds only a handful of distinct values and the
  interval collapses (3 positives: recall can only be 0, 33, 67 or 100 %). Such a value gets no interval (None), and
  the report says ``n=3: too few for an interval``; mAP gets none on fewer than :data:`MIN_COUNT` images.
- **A proportion of 0 or 100 %.** Every resample of a recall of 100 % is again 100 %: the bootstrap gives [100, 100]
  whatever the number of positives. For recall and precision at 0 or 100 % the interval is the exact binomial one
  (Clopper & Pearson, Biometrika 1934) in closed form: [0, 1 - (a/2)^(1/n)] for 0 of n, [(a/2)^(1/n), 1] for n of
  n, with a = 1 - level.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from probmcl_med.core.metrics import as_numpy, check_scores_targets, ranking

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0
MAX_CHUNK_CELLS = 2_000_000  # resamples x images held at once (16 MB of float64 weights)
MIN_COUNT = 10
"""Fewest images behind a value (positives for recall and AP, calls for precision, images for mAP) for an interval."""
COUNT_OF = {"recall": "support", "precision": "predicted", "ap": "support"}
"""Which per-class count (a :func:`~probmcl_med.core.metrics.multilabel_metrics` row key) each interval rests on."""


def resample_weights(n: int, resamples: int, seed: int, chunk: int | None = None) -> Iterator[np.ndarray]:
    """Draw counts of the resamples, ``chunk`` resamples at a time: (chunk, n) arrays, row b counting how often
    resample b drew each of the n images.

    The draws are ``default_rng(seed).integers(0, n, size=(resamples, n))``, generated in row blocks (the same
    stream of numbers), so memory stays at ``chunk * n`` whatever the number of resamples.
    """
    rng = np.random.default_rng(seed)
    chunk = chunk or resamples
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(rows, n))
        offsets = np.arange(rows)[:, None] * n
        counts = np.bincount((draws + offsets).ravel(), minlength=rows * n)
        yield counts.reshape(rows, n).astype(np.float64)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (an undefined value, left out of the percentiles)."""
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def resampled_ap(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP per class ((B, C), fractions, NaN without a positive) and mAP ((B,), over the classes with a positive in
    that resample) of B resamples given as draw counts ``weights`` (B, N) of the (N, C) ``scores`` and ``targets``."""
    support = weights @ targets
    order, group_end = ranking(scores)
    ap = np.empty_like(support)
    for c in range(scores.shape[1]):
        w = weights[:, order[c]]  # (B, N) in the class's ranking
        positive = targets[order[c], c]
        cum_tp = np.cumsum(w * positive, axis=1)
        precision_at_end = _divide(cum_tp[:, group_end[c]], np.cumsum(w, axis=1)[:, group_end[c]])
        ap[:, c] = _divide(np.nansum(w * positive * precision_at_end, axis=1), cum_tp[:, -1])
    has_positive = support > 0
    mean_ap = _divide(np.where(has_positive, ap, 0.0).sum(axis=1), has_positive.sum(axis=1))
    return ap, mean_ap


def resampled_metrics(
    scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Recall, precision and AP per class (each (B, C), fractions, NaN where undefined) and mAP (B,) of B resamples.

    Args:
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        thresholds: (C,) thresholds (``score >= threshold`` is a call).
        weights: (B, N) draw counts (:func:`resample_weights`).
    """
    pred = (scores >= thresholds[None, :]).astype(np.float64)
    tp = weights @ (pred * targets)
    recall = _divide(tp, weights @ targets)
    precision = _divide(tp, weights @ pred)
    ap, mean_ap = resampled_ap(scores, targets, weights)
    return {"recall": recall, "precision": precision, "ap": ap, "mAP": mean_ap}


def percentile_interval(values: np.ndarray, level: float) -> list[float] | None:
    """[lo, hi] percentiles (percent units) of the finite values, or None when there are none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return [100.0 * float(lo), 100.0 * float(hi)]


def exact_interval(successes: int, n: int, level: float = LEVEL) -> list[float] | None:
    """The Clopper-Pearson interval (percent) of a proportion of 0 or n out of n, in closed form; None otherwise.

    For 0 of n: [0, 1 - (a/2)^(1/n)]; for n of n: [(a/2)^(1/n), 1], a = 1 - level (the beta quantiles of the exact
    interval reduce to these powers at the ends).
    """
    if n <= 0 or 0 < successes < n:
        return None
    bound = ((1.0 - level) / 2.0) ** (1.0 / n)
    return [0.0, 100.0 * (1.0 - bound)] if successes == 0 else [100.0 * bound, 100.0]


def bootstrap_intervals(
    scores: Any,
    targets: Any,
    thresholds: Any,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> dict[str, Any]:
    """Percentile-bootstrap intervals of per-class recall, precision, AP and of mAP (see the module docstring).

    Args:
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        thresholds: one threshold or (C,) thresholds.
        resamples: number of bootstrap resamples B.
        level: the interval's coverage (0.95).
        seed: seed of the resampling (the same seed gives the same intervals).

    Returns:
        ``{"per_class": [{"recall_ci": [lo, hi] | None, "precision_ci", "ap_ci"}, ...] (class order, percent),
        "mAP_ci": [lo, hi] | None, "method": {...}}``. An interval is None when the value is undefined in every
        resample (a class without positives has no recall_ci and no ap_ci) or rests on fewer than
        :data:`MIN_COUNT` images (see the module docstring); a recall or precision of 0 or 100 % gets the exact
        interval (:func:`exact_interval`).
    """
    s, t = as_numpy(scores), as_numpy(targets)
    check_scores_targets(s, t)
    n, c = s.shape
    thr = np.broadcast_to(as_numpy(thresholds), (c,)).astype(np.float64)
    chunk = max(1, MAX_CHUNK_CELLS // n)
    parts = [resampled_metrics(s, t, thr, w) for w in resample_weights(n, resamples, seed, chunk)]
    values = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    called = s >= thr[None, :]
    counts = {"support": t.sum(axis=0), "predicted": called.sum(axis=0)}
    hits = (called & (t == 1)).sum(axis=0)
    per_class = []
    for k in range(c):
        row = {}
        for key, count_key in COUNT_OF.items():
            count = int(counts[count_key][k])
            ci = percentile_interval(values[key][:, k], level) if count >= MIN_COUNT else None
            if ci is not None and key != "ap":
                ci = exact_interval(int(hits[k]), count, level) or ci
            row[f"{key}_ci"] = ci
        per_class.append(row)
    return {
        "per_class": per_class,
        "mAP_ci": percentile_interval(values["mAP"], level) if n >= MIN_COUNT else None,
        "method": {
            "name": "percentile bootstrap over images",
            "resamples": int(resamples),
            "level": float(level),
            "seed": int(seed),
            "min_count": MIN_COUNT,
            "at_0_or_100": "exact (Clopper-Pearson) interval for recall and precision",
        },
    }
