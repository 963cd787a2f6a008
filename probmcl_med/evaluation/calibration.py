"""Calibration: does a predicted probability of 0.8 mean the class is there 8 times in 10?

Expected calibration error (Naeini, Cooper & Hauskrecht, AAAI 2015; Guo et al., ICML 2017, Eq. 3), read per class
for multi-label outputs: the class's N scores are put in M equal-width bins over [0, 1] (bin m holds scores in
[m/M, (m+1)/M), the last bin also holds 1.0), and

    ECE_c = sum_m (n_m / N) * | positive rate in bin m - mean score in bin m |

where n_m is the number of scores in bin m. The overall ECE pools the N * C (image, class) pairs into one set and
applies the same formula. Reported in percent (0 = perfectly calibrated; the largest possible is 100).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probmcl_med.core.metrics import as_numpy, check_scores_targets

BINS = 10


def bin_index(scores: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin of each score: floor(score * bins), with 1.0 in the last bin. Same shape as ``scores``."""
    return np.minimum((np.asarray(scores) * bins).astype(np.int64), bins - 1)


def reliability(scores: np.ndarray, targets: np.ndarray, bins: int = BINS) -> dict[str, np.ndarray]:
    """Per bin: count, mean score and positive rate of a flat set of (score, label) pairs.

    Args:
        scores: (K,) probabilities.
        targets: (K,) 0/1 labels.
        bins: M.

    Returns:
        ``{"count": (M,), "mean_score": (M,), "positive_rate": (M,)}``; an empty bin has count 0 and NaN rates.
    """
    index = bin_index(scores, bins)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    score_sum = np.bincount(index, weights=scores, minlength=bins)
    positive_sum = np.bincount(index, weights=targets, minlength=bins)
    nan = np.full(bins, np.nan)
    return {
        "count": count,
        "mean_score": np.divide(score_sum, count, out=nan.copy(), where=count > 0),
        "positive_rate": np.divide(positive_sum, count, out=nan.copy(), where=count > 0),
    }


def expected_calibration_error(scores: np.ndarray, targets: np.ndarray, bins: int = BINS) -> float:
    """ECE of a flat set of (score, label) pairs, a fraction in [0, 1] (see the module docstring)."""
    r = reliability(scores, targets, bins)
    used = r["count"] > 0
    gap = np.abs(r["positive_rate"][used] - r["mean_score"][used])
    return float((r["count"][used] * gap).sum() / max(len(scores), 1))


def calibration_summary(scores: Any, targets: Any, bins: int = BINS) -> dict[str, Any]:
    """ECE per class and overall, and the pooled reliability table (percent).

    Args:
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        bins: number of equal-width bins M.

    Returns:
        ``{"ece": overall ECE, "per_class_ece": [C values], "bins": M, "reliability": [{"lo", "hi", "count",
        "mean_score", "positive_rate"}, ...]}``, ECE and rates in percent, ``None`` for an empty bin's rates.
    """
    s, t = as_numpy(scores), as_numpy(targets)
    check_scores_targets(s, t)
    per_class = [100.0 * expected_calibration_error(s[:, c], t[:, c], bins) for c in range(s.shape[1])]
    pooled = reliability(s.ravel(), t.ravel(), bins)
    table = [
        {
            "lo": m / bins,
            "hi": (m + 1) / bins,
            "count": int(pooled["count"][m]),
            "mean_score": None if pooled["count"][m] == 0 else 100.0 * float(pooled["mean_score"][m]),
            "positive_rate": None if pooled["count"][m] == 0 else 100.0 * float(pooled["positive_rate"][m]),
        }
        for m in range(bins)
    ]
    return {
        "ece": 100.0 * expected_calibration_error(s.ravel(), t.ravel(), bins),
        "per_class_ece": per_class,
        "bins": bins,
        "reliability": table,
    }
