"""Multi-label metrics of the paper's tables (mAP, CP, CR, CF1, OP, OR, OF1) and per-class AP, precision, recall.

Definitions: ../docs/math.md section 10 and the evaluation paragraph of the paper (Tables 1-2).

Conventions, stated once and used by every function in :mod:`probmcl_med.evaluation`:

- **Threshold rule:** a label is predicted positive when ``score >= threshold`` (greater *or equal*). The paper says
  "exceed", but the reference implementation it follows (ML-GCN [9], ``scores >= 0`` on logits, i.e. ``p >= 0.5``)
  uses ``>=``, and with ``>=`` a tuned threshold (:mod:`.thresholds`) is an attainable score value. The two readings
  differ only for scores exactly equal to the threshold (e.g. ``sigmoid(0) == 0.5``).
- **Units:** every ratio (AP, precision, recall, F1 and the summary metrics) is a percentage in [0, 100].
- **Classes without a positive** in the evaluated set have no AP and no recall: they are left out of mAP, CP, CR and
  CF1, listed in ``excluded_from_map`` with the reason, and carry ``None`` (JSON ``null``) for ``ap``, ``recall``
  and ``f1``. Their false positives still count in OP. No value is ever NaN.
- **Precision of a class with no prediction** is undefined: its per-class ``precision`` is ``None`` (shown as n/a),
  while CP counts it as 0, the paper's convention (math.md s.10). OP is 0 when nothing at all is predicted.
- **AP ties** are grouped as scikit-learn's ``average_precision_score`` groups them: all samples sharing a score
  enter the ranking together, and each positive gets the precision at the *last* index of its tie group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from probmcl_med.errors import DataError

THRESHOLD_RULE = "score >= threshold"
SUMMARY_KEYS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
NO_POSITIVE_REASON = "no positive sample in the evaluated set (AP and recall are undefined)"


def as_numpy(x: Any) -> np.ndarray:
    """Return ``x`` (numpy array, torch tensor, or nested sequence) as a float64 numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _default_locate(row: int, col: int) -> str:
    return f"row {row}, column {col}"


def check_scores_targets(
    scores: np.ndarray,
    targets: np.ndarray,
    scores_name: str = "scores",
    targets_name: str = "targets",
    locate_scores: Callable[[int, int], str] = _default_locate,
    locate_targets: Callable[[int, int], str] = _default_locate,
) -> None:
    """Raise :class:`DataError` (one line, naming the source) unless scores/targets are a valid (N, C) pair.

    Checks: both 2-D with N >= 1 and C >= 1, equal shapes, scores finite and within [0, 1] (probabilities, not
    logits), targets only 0 or 1. ``locate_*(row, col)`` turns 0-based array indices into the words the message uses
    (a CSV reader passes one that names the line and the class column).
    """
    for arr, name in ((scores, scores_name), (targets, targets_name)):
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise DataError(f"{name}: expected a 2-D (samples, classes) array, got shape {tuple(arr.shape)}")
    if scores.shape != targets.shape:
        raise DataError(
            f"{scores_name} has shape {tuple(scores.shape)} but {targets_name} has shape {tuple(targets.shape)}; "
            "they must hold the same samples and classes in the same order"
        )
    bad = ~np.isfinite(scores)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{scores_name}: {scores[r, c]} at {locate_scores(r, c)}; scores must be finite")
    bad = (scores < 0) | (scores > 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{scores_name}: {scores[r, c]:g} at {locate_scores(r, c)} is outside [0, 1]; scores must be "
            "probabilities (apply a sigmoid to logits first)"
        )
    bad = (targets != 0) & (targets != 1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{targets_name}: {targets[r, c]:g} at {locate_targets(r, c)}; targets must be 0 or 1")


def _thresholds(threshold: float | Sequence[float] | np.ndarray, num_classes: int) -> np.ndarray:
    """Return the threshold(s) as a (C,) float64 array, checking each is a finite number in [0, 1]."""
    thr = as_numpy(threshold)
    if thr.ndim == 0:
        thr = np.full(num_classes, float(thr))
    if thr.shape != (num_classes,):
        raise DataError(f"threshold: expected one number or {num_classes} (one per class), got shape {thr.shape}")
    if not np.all(np.isfinite(thr)) or np.any((thr < 0) | (thr > 1)):
        raise DataError(f"threshold: every threshold must be a number in [0, 1], got {thr.tolist()}")
    return thr


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (no NaN)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)


def harmonic_mean(p: np.ndarray | float, r: np.ndarray | float) -> np.ndarray:
    """2 p r / (p + r), 0 where p + r == 0 (F1 from precision and recall; CF1 and OF1 in math.md s.10)."""
    p, r = np.asarray(p, np.float64), np.asarray(r, np.float64)
    return _ratio(2.0 * p * r, p + r)


def ranking(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the samples in descending-score order and the end of each run of tied scores.

    Works on the transposed (C, N) layout so that every sort runs over contiguous memory. The order inside a run of
    tied scores is arbitrary (an unstable sort, several times faster); nothing computed from it depends on that
    order, because every quantity is read at the end of a run.

    Args:
        scores: (N, C) scores.

    Returns:
        order: (C, N) sample indices, descending score per class.
        group_end: (C, N) for each rank i, the last rank whose score equals the score at rank i.
    """
    s = np.ascontiguousarray(scores.T)
    order = np.argsort(-s, axis=1)
    s_sorted = np.take_along_axis(s, order, axis=1)
    n = s.shape[1]
    is_end = np.ones_like(s_sorted, dtype=bool)
    is_end[:, :-1] = s_sorted[:, :-1] != s_sorted[:, 1:]
    # next run end at or after each rank: a running minimum taken from the bottom of the ranking
    ends = np.where(is_end, np.arange(n), n)
    group_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    return order, group_end


def _ranked(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`ranking` plus the targets in that order and the cumulative true positives down it.

    Returns:
        t_sorted: (C, N) targets in descending-score order per class.
        tp: (C, N) cumulative true positives down the ranking.
        group_end: (C, N) for each rank i, the last rank whose score equals the score at rank i.
    """
    order, group_end = ranking(scores)
    t_sorted = np.take_along_axis(np.ascontiguousarray(targets.T), order, axis=1)
    return t_sorted, np.cumsum(t_sorted, axis=1), group_end


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision, exactly as scikit-learn's ``average_precision_score`` (ties grouped).

    AP_c = (1 / P_c) * sum over positives of precision at the last rank of the positive's tie group, which is
    sklearn's sum_n (R_n - R_{n-1}) P_n over distinct thresholds (math.md s.10).

    Args:
        scores: (N, C) float64 scores, higher means more likely positive.
        targets: (N, C) float64 0/1 labels.

    Returns:
        (C,) AP in [0, 1]; 0 for a class without positives (the caller excludes those).
    """
    t_sorted, tp, group_end = _ranked(scores, targets)
    precision = tp / np.arange(1, scores.shape[0] + 1)
    precision_at_group_end = np.take_along_axis(precision, group_end, axis=1)
    return _ratio((t_sorted * precision_at_group_end).sum(axis=1), tp[:, -1])


def precision_recall_points(scores: np.ndarray, targets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class, the precision-recall curve at every distinct score (sklearn's ``precision_recall_curve`` points).

    Returns:
        A list of C pairs ``(recall, precision)``, each a 1-D array in [0, 1] ordered by increasing recall and
        starting at (0, 1); a class without positives gets empty arrays.
    """
    _, tp, group_end = _ranked(scores, targets)
    is_end = group_end == np.arange(scores.shape[0])
    curves = []
    for c in range(scores.shape[1]):
        positives = tp[c, -1]
        if positives == 0:
            curves.append((np.empty(0), np.empty(0)))
            continue
        ends = np.flatnonzero(is_end[c])
        recall = np.concatenate([[0.0], tp[c, ends] / positives])
        precision = np.concatenate([[1.0], tp[c, ends] / (ends + 1)])
        curves.append((recall, precision))
    return curves


def multilabel_metrics(
    scores: Any,
    targets: Any,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All metrics of the paper's tables, plus per-class detail, as a JSON-serialisable dict.

    Formulas: math.md s.10. Conventions (``>=`` threshold rule, percentages, classes without positives, ties): see
    the module docstring.

    Args:
        scores: (N, C) probabilities in [0, 1], numpy array or torch tensor.
        targets: (N, C) 0/1 labels, numpy array or torch tensor.
        threshold: one threshold for all classes, or a (C,) array of per-class thresholds.
        class_names: C names; defaults to ``class_0 ... class_{C-1}``.

    Returns:
        ``{"summary": {"mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"} (percent),
        "per_class": [{"name", "ap", "precision", "recall", "f1", "support", "predicted", "tp", "threshold"}, ...]
        (class order; ap/recall/f1 ``None`` for a class without positives, precision ``None`` for a class never
        called), "excluded_from_map": [{"name",
        "reason"}, ...], "num_samples", "num_classes", "num_evaluated_classes", "threshold" (float or list),
        "threshold_rule", "units"}``. Summary values are ``None`` only if no class has a positive at all.

    Raises:
        DataError: shapes differ or are not 2-D, scores not finite or outside [0, 1], targets not 0/1, a threshold
            outside [0, 1], or the number of class names differs from C.
    """
    s, t = as_numpy(scores), as_numpy(targets)
    check_scores_targets(s, t)
    n, c = s.shape
    names = [f"class_{i}" for i in range(c)] if class_names is None else [str(x) for x in class_names]
    if len(names) != c:
        raise DataError(f"class_names: got {len(names)} names for {c} score columns")
    thr = _thresholds(threshold, c)

    pred = s >= thr[None, :]
    support = t.sum(axis=0)
    predicted = pred.sum(axis=0).astype(np.float64)
    tp = (pred & (t == 1)).sum(axis=0).astype(np.float64)
    evaluated = support > 0

    ap = average_precision(s, t)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = harmonic_mean(precision, recall)

    if evaluated.any():
        cp, cr = precision[evaluated].mean(), recall[evaluated].mean()
        op, or_ = _ratio(tp.sum(), predicted.sum()), _ratio(tp.sum(), support.sum())
        summary: dict[str, float | None] = {
            "mAP": 100.0 * float(ap[evaluated].mean()),
            "CP": 100.0 * float(cp),
            "CR": 100.0 * float(cr),
            "CF1": 100.0 * float(harmonic_mean(cp, cr)),
            "OP": 100.0 * float(op),
            "OR": 100.0 * float(or_),
            "OF1": 100.0 * float(harmonic_mean(op, or_)),
        }
    else:
        summary = dict.fromkeys(SUMMARY_KEYS)

    per_class = []
    for i, name in enumerate(names):
        ok = bool(evaluated[i])
        per_class.append(
            {
                "name": name,
                "ap": 100.0 * float(ap[i]) if ok else None,
                "precision": 100.0 * float(precision[i]) if predicted[i] > 0 else None,
                "recall": 100.0 * float(recall[i]) if ok else None,
                "f1": 100.0 * float(f1[i]) if ok else None,
                "support": int(support[i]),
                "predicted": int(predicted[i]),
                "tp": int(tp[i]),
                "threshold": float(thr[i]),
            }
        )
    uniform = bool(np.all(thr == thr[0]))
    return {
        "summary": summary,
        "per_class": per_class,
        "excluded_from_map": [{"name": names[i], "reason": NO_POSITIVE_REASON} for i in np.flatnonzero(~evaluated)],
        "num_samples": int(n),
        "num_classes": int(c),
        "num_evaluated_classes": int(evaluated.sum()),
        "threshold": float(thr[0]) if uniform else [float(x) for x in thr],
        "threshold_rule": THRESHOLD_RULE,
        "units": "percent",
    }


def thresholds_of(metrics: dict[str, Any]) -> np.ndarray:
    """(C,) float64: the per-class thresholds a :func:`multilabel_metrics` dict was computed at."""
    return np.array([row["threshold"] for row in metrics["per_class"]], dtype=np.float64)


def below_recall_floor(metrics: dict[str, Any], recall_floor: float) -> list[str]:
    """Names of the classes whose recall is under ``recall_floor`` (a fraction in (0, 1], e.g. 0.8).

    Classes without positives (recall ``None``) are never listed: they cannot miss anything.
    """
    check_recall_floor(recall_floor)
    return [
        row["name"]
        for row in metrics["per_class"]
        if row["recall"] is not None and row["recall"] < 100.0 * recall_floor
    ]


def check_recall_floor(recall_floor: float) -> None:
    """Raise :class:`DataError` unless ``recall_floor`` is a fraction in [0, 1] (0.8, not 80)."""
    if not (0.0 <= float(recall_floor) <= 1.0):
        raise DataError(f"recall floor {recall_floor!r}: give a fraction in [0, 1], e.g. 0.8 for 80 %")


def sorted_by_recall(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-class rows sorted by recall ascending (worst first); classes without positives last."""
    return sorted(metrics["per_class"], key=lambda r: (r["recall"] is None, r["recall"] or 0.0, r["name"]))
