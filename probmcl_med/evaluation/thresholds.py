"""Per-class decision thresholds tuned for a recall target, and what that recall costs in precision.

A pathologist would rather read a few false alarms than miss a tissue type, so a threshold is chosen per class on
validation data to keep that class's recall at or above a target, and the test set then shows the precision paid.

Threshold rule: a label is predicted positive when ``score >= threshold`` (the rule of :mod:`.metrics`). With that
rule the highest threshold that keeps recall >= r is a score the data actually contains: the k-th highest score
among the class's positives, with k = ceil(r * P).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from probmcl_med.core.metrics import as_numpy, check_scores_targets, multilabel_metrics
from probmcl_med.errors import DataError

FALLBACK_THRESHOLD = 0.5
"""Threshold given to a class without positives in the tuning data: its recall cannot be measured, so it keeps the
paper's default (0.5)."""

FEW_POSITIVES = 10
"""A class tuned on fewer validation positives than this has a threshold that one image can move: it is named."""


@dataclass(frozen=True)
class OperatingPoint:
    """What an evaluation's thresholds are, for the words every output says about them.

    Attributes:
        description: the thresholds in words (the line every command prints).
        tuned: per-class thresholds chosen for a rule (tuned now or read from ``thresholds.json``).
        rule: the rule, in words (``recall >= 0.9 per class``).
        tuned_on: the dataset's name of the split they were tuned on.
        recall_target: the recall target when tuned by this evaluation.
        same_split: the evaluated split is the one they were tuned on (optimistic numbers).
        checkpoint: the run folder (for the commands the findings suggest), or None.
        untuned: classes without a positive in the tuning split: their threshold stayed at
            :data:`FALLBACK_THRESHOLD`.
        few_positives: ``(class, positives)`` of the classes tuned on fewer than :data:`FEW_POSITIVES` positives.
        saved: the thresholds file this evaluation wrote, or None.
    """

    description: str
    tuned: bool = False
    rule: str | None = None
    tuned_on: str | None = None
    recall_target: float | None = None
    same_split: bool = False
    checkpoint: str | None = None
    untuned: tuple[str, ...] = ()
    few_positives: tuple[tuple[str, int], ...] = ()
    saved: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``few_positives`` as ``{class: positives}``)."""
        out = asdict(self)
        out["untuned"] = list(self.untuned)
        out["few_positives"] = dict(self.few_positives)
        return out


def tuning_coverage(targets: Any, class_names: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """Which classes :func:`tune_thresholds` could not tune, and which it tuned on few positives.

    Args:
        targets: (N, C) 0/1 labels of the tuning (validation) split.
        class_names: C names.

    Returns:
        ``(untuned, few)``: the classes without a positive (kept at :data:`FALLBACK_THRESHOLD`), and ``(name,
        positives)`` of those with 1 to :data:`FEW_POSITIVES` - 1 positives.
    """
    positives = as_numpy(targets).sum(axis=0).astype(int)
    untuned = tuple(str(n) for n, p in zip(class_names, positives, strict=True) if p == 0)
    few = tuple((str(n), int(p)) for n, p in zip(class_names, positives, strict=True) if 0 < p < FEW_POSITIVES)
    return untuned, few


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
    """What the tuned thresholds change on the (test) data: precision and recall at them vs at ``baseline``.

    Args:
        scores: (N, C) test probabilities.
        targets: (N, C) test labels.
        thresholds: (C,) tuned thresholds (from :func:`tune_thresholds` on validation data).
        class_names: C names, optional.
        baseline: the single threshold to compare with (the paper's 0.5).

    Returns:
        ``{"baseline_threshold", "summary": {"tuned": {...}, "baseline": {...}}, "per_class": [{"name", "threshold",
        "precision_tuned", "precision_baseline", "precision_change", "recall_tuned", "recall_baseline",
        "recall_change"}, ...]}``, all in percent. A change is tuned minus baseline, in percentage points: positive
        when the tuned thresholds raise the value. ``None`` where either side is undefined (recall of a class
        without positives, precision of a class that is never called).
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
                "precision_change": _change(b["precision"], a["precision"]),
                "recall_tuned": a["recall"],
                "recall_baseline": b["recall"],
                "recall_change": _change(b["recall"], a["recall"]),
            }
        )
    return {
        "baseline_threshold": float(baseline),
        "summary": {"tuned": tuned["summary"], "baseline": base["summary"]},
        "per_class": rows,
    }


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} %"


def _change(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def movement(what: str, before: float | None, after: float | None) -> str:
    """``precision rises from 36.4 % to 52.0 % (+15.6 points)``: a change in words, its direction first.

    ``what`` names the quantity; ``n/a`` is said when either value is undefined.
    """
    if before is None or after is None:
        return f"{what} {_percent(before)} -> {_percent(after)} (undefined on one side)"
    delta = after - before
    if abs(delta) < 0.05:
        return f"{what} stays at {after:.1f} %"
    verb = "rises" if delta > 0 else "falls"
    return f"{what} {verb} from {before:.1f} % to {after:.1f} % ({delta:+.1f} points)"


def tradeoff_sentence(tradeoff: dict[str, Any]) -> str:
    """What the tuned thresholds do against the baseline, pooled over classes, in one sentence of words.

    e.g. ``Against 0.5 for every class, the tuned thresholds: mean precision (CP) rises from 36.4 % to 52.0 % (+15.6
    points); mean recall (CR) falls from 98.5 % to 87.9 % (-10.6 points); ...``.
    """
    tuned, base = tradeoff["summary"]["tuned"], tradeoff["summary"]["baseline"]
    parts = [
        movement(words, base[key], tuned[key])
        for key, words in (
            ("CP", "mean precision (CP)"),
            ("CR", "mean recall (CR)"),
            ("OP", "overall precision (OP)"),
            ("OR", "overall recall (OR)"),
        )
    ]
    return (
        f"Against {tradeoff['baseline_threshold']:g} for every class, the tuned thresholds: " + "; ".join(parts) + "."
    )


def parse_recall_target(text: str) -> float:
    """``recall=0.95`` (or ``0.95``) -> 0.95; a fraction in (0, 1]. Anything else is a one-line DataError."""
    raw = text.strip()
    if "=" in raw:
        key, raw = (part.strip() for part in raw.split("=", 1))
        if key.lower() != "recall":
            close = difflib.get_close_matches(key.lower(), ["recall"], n=1, cutoff=0.5)
            hint = " (did you mean recall?)" if close else ""
            raise DataError(f"--tune-thresholds {text!r}: only recall=R is supported{hint}, e.g. recall=0.95")
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"--tune-thresholds {text!r}: expected recall=R with R a fraction, e.g. recall=0.95") from None
    if not 0.0 < value <= 1.0:
        raise DataError(f"--tune-thresholds {text!r}: the recall target must be a fraction in (0, 1], e.g. 0.95")
    return value
