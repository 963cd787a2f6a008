"""Per-class decision thresholds tuned for a recall target, and what that recall costs in precision.

A pathologist would rather read a few false alarms than miss a tissue type, so a threshold is chosen per class on
validation data to keep that class's recall at or above a target, and the test set then shows the precision paid.

Threshold rule: a label is predicted positive when ``score >= threshold`` (the rule of :mod:`.metrics`). With that
rule the highest threshold that keeps recall >= r is a score the data actually contains: the k-th highest score
among the class's positives, with k = ceil(r * P).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probmcl_med.core.metrics import as_numpy, check_scores_targets, multilabel_metrics
from probmcl_med.errors import DataError

FALLBACK_THRESHOLD = 0.5
"""Threshold given to a class without positives in the tuning data: its recall cannot be measured, so it keeps the
paper's default (0.5)."""


def tune_thresholds(scores: Any, targets: Any, recall: float = 0.95) -> np.ndarray:
    """Per class, the highest threshold that keeps recall >= ``recall`` on the given (validation) data.

    Args:
        scores: (N, C) probabilities in [0, 1] (numpy or torch).
        targets: (N, C) 0/1 labels.
        recall: target recall, a fraction in (0, 1].

    Returns:
        (C,) float64 thresholds. Class c with P_c positives gets the k-th highest positive score, k = ceil(recall *
        P_c) (any higher threshold predicts at most k - 1 of its positives); a class without positives gets
        :data:`FALLBACK_THRESHOLD`.

    Raises:
        DataError: invalid scores/targets (see :func:`.metrics.check_scores_targets`) or recall outside (0, 1].
    """
    recall = float(recall)
    if not (0.0 < recall <= 1.0):
        raise DataError(f"recall target {recall!r}: give a fraction in (0, 1], e.g. 0.95")
    s, t = as_numpy(scores), as_numpy(targets)
    check_scores_targets(s, t)
    positives = t.sum(axis=0)
    # k = the smallest count with k / P >= recall as evaluated in float64 (the way metrics computes recall):
    # ceil(recall * P), then nudged by one where rounding put recall * P a hair off an integer (0.95 * 20)
    p = np.maximum(positives, 1.0)
    k = np.ceil(recall * p)
    k = np.where((k - 1) / p >= recall, k - 1, k)
    k = np.where(k / p < recall, k + 1, k).astype(np.int64)
    positive_scores = -np.sort(-np.where(t == 1, s, -np.inf), axis=0)  # (N, C), positives first, descending
    row = np.clip(k - 1, 0, s.shape[0] - 1)
    tuned = positive_scores[row, np.arange(s.shape[1])]
    return np.where(positives > 0, tuned, FALLBACK_THRESHOLD)


def threshold_tradeoff(
    scores: Any,
    targets: Any,
    thresholds: Any,
    class_names: list[str] | None = None,
    baseline: float = 0.5,
) -> dict[str, Any]:
    """What the tuned thresholds cost on the (test) data: precision and recall at them vs at ``baseline``.

    Args:
        scores: (N, C) test probabilities.
        targets: (N, C) test labels.
        thresholds: (C,) tuned thresholds (from :func:`tune_thresholds` on validation data).
        class_names: C names, optional.
        baseline: the single threshold to compare with (the paper's 0.5).

    Returns:
        ``{"baseline_threshold", "summary": {"tuned": {...}, "baseline": {...}}, "per_class": [{"name", "threshold",
        "precision_tuned", "precision_baseline", "precision_cost", "recall_tuned", "recall_baseline"}, ...]}``, all
        in percent; ``precision_cost`` = baseline precision - tuned precision (positive: precision paid for recall);
        recall ``None`` for a class without positives.
    """
    tuned = multilabel_metrics(scores, targets, threshold=thresholds, class_names=class_names)
    base = multilabel_metrics(scores, targets, threshold=baseline, class_names=class_names)
    rows = []
    for a, b in zip(tuned["per_class"], base["per_class"], strict=True):
        rows.append(
            {
                "name": a["name"],
                "threshold": a["threshold"],
                "precision_tuned": a["precision"],
                "precision_baseline": b["precision"],
                "precision_cost": b["precision"] - a["precision"],
                "recall_tuned": a["recall"],
                "recall_baseline": b["recall"],
            }
        )
    return {
        "baseline_threshold": float(baseline),
        "summary": {"tuned": tuned["summary"], "baseline": base["summary"]},
        "per_class": rows,
    }
