"""Is model B better than model A on these images? The paired bootstrap of the difference in mAP and in per-class AP.

Both models are scored on the same N images. A resample draws N images with replacement (the draws of
:func:`~probmcl_med.evaluation.bootstrap.resample_weights`, the same stream as the report's intervals) and computes
both models' AP on *that same* resample, so the difference keeps the pairing: an image that is hard for both moves
both APs together and does not widen the interval (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993,
ch. 13 and 16).

- **Interval:** the (2.5, 97.5) percentiles of the resampled differences (percentile bootstrap, in points).
- **p-value** (two-sided, of "no difference"): the resampled differences, centred on the observed one, mimic the
  differences a no-difference world would give; p is the share of them at least as far from 0 as the observed one,
  with the add-one rule of Davison & Hinkley (*Bootstrap Methods and their Application*, 1997, eq. 4.11) so that it
  is never 0: p = (1 + #{b : |d*_b - d| >= |d|}) / (B + 1). A model compared with itself gives d = 0, the interval
  [0, 0] and p = 1.

Undefined values follow the report's rules (:mod:`.bootstrap`): a class's AP difference in a resample without a
positive of the class is left out; a class with fewer than :data:`~probmcl_med.evaluation.bootstrap.MIN_COUNT`
positives gets no interval and no p-value; mAP averages the classes with a positive in the resample (the same
classes for both models, since the targets are shared).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probmcl_med.core.metrics import as_numpy, average_precision, check_scores_targets
from probmcl_med.errors import DataError
from probmcl_med.evaluation.bootstrap import (
    LEVEL,
    MAX_CHUNK_CELLS,
    MIN_COUNT,
    RESAMPLES,
    SEED,
    percentile_interval,
    resample_weights,
    resampled_ap,
)


def shifted_p_value(observed: float, resampled: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of "no difference": (1 + #{|d* - d| >= |d|}) / (B + 1) over the finite d*.

    Args:
        observed: the difference d on the full data (percentage points).
        resampled: (B,) the differences d* of the resamples (NaN: undefined, left out).

    Returns:
        p in (0, 1], or None when no resample defines the difference.
    """
    finite = resampled[np.isfinite(resampled)]
    if finite.size == 0:
        return None
    # a tolerance of a few ulps: d* - d for an identical model is exactly 0, for others rounding must not count
    far = np.abs(finite - observed) >= np.abs(observed) - 1e-12 * max(1.0, abs(observed))
    return float((1 + far.sum()) / (finite.size + 1))


def paired_ap_difference(
    reference: Any,
    model: Any,
    targets: Any,
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> dict[str, Any]:
    """mAP and per-class AP of ``model`` minus ``reference`` on the same images, with paired bootstrap intervals.

    Args:
        reference: (N, C) probabilities of model A.
        model: (N, C) probabilities of model B, same images and classes in the same order.
        targets: (N, C) 0/1 labels.
        resamples: bootstrap resamples B (>= 1).
        level: the intervals' coverage.
        seed: seed of the resampling (the same seed draws the same resamples as the report's intervals).

    Returns:
        ``{"delta_mAP": d (points), "delta_mAP_ci": [lo, hi] | None, "delta_mAP_p": p | None, "per_class":
        [{"delta_ap", "delta_ap_ci", "delta_ap_p"}, ...] (class order; None for a class without positives, no
        interval or p for one with fewer than MIN_COUNT), "method": {...}}``, all differences in percentage
        points (B minus A).

    Raises:
        DataError: invalid or mismatched arrays, or ``resamples`` < 1.
    """
    a, b, t = as_numpy(reference), as_numpy(model), as_numpy(targets)
    check_scores_targets(a, t, "reference scores", "targets")
    check_scores_targets(b, t, "model scores", "targets")
    if resamples < 1:
        raise DataError(f"--bootstrap {resamples}: a comparison needs resamples (e.g. 1000)")
    n, c = t.shape
    support = t.sum(axis=0)
    has = support > 0
    ap_a, ap_b = 100.0 * average_precision(a, t), 100.0 * average_precision(b, t)
    delta = ap_b - ap_a
    delta_map = float(delta[has].mean()) if has.any() else None
    chunk = max(1, MAX_CHUNK_CELLS // n)
    per_ap, per_map = [], []
    for w in resample_weights(n, resamples, seed, chunk):
        (ra, ma), (rb, mb) = resampled_ap(a, t, w), resampled_ap(b, t, w)
        per_ap.append(100.0 * (rb - ra))
        per_map.append(100.0 * (mb - ma))
    d_ap, d_map = np.concatenate(per_ap), np.concatenate(per_map)
    per_class = []
    for k in range(c):
        if not has[k]:
            per_class.append({"delta_ap": None, "delta_ap_ci": None, "delta_ap_p": None})
            continue
        enough = support[k] >= MIN_COUNT
        per_class.append(
            {
                "delta_ap": float(delta[k]),
                "delta_ap_ci": percentile_interval(d_ap[:, k] / 100.0, level) if enough else None,
                "delta_ap_p": shifted_p_value(float(delta[k]), d_ap[:, k]) if enough else None,
            }
        )
    enough = delta_map is not None and n >= MIN_COUNT
    return {
        "delta_mAP": delta_map,
        "delta_mAP_ci": percentile_interval(d_map / 100.0, level) if enough else None,
        "delta_mAP_p": shifted_p_value(delta_map, d_map) if enough and delta_map is not None else None,
        "per_class": per_class,
        "method": {
            "name": "paired percentile bootstrap over images (both models on each resample)",
            "p_value": "two-sided, (1 + #{|d* - d| >= |d|}) / (B + 1)",
            "resamples": int(resamples),
            "level": float(level),
            "seed": int(seed),
            "min_count": MIN_COUNT,
        },
    }
