"""Does a score tell which predictions are wrong? AUROC and selective prediction (risk-coverage), NumPy only.

Used by benchmarks/evidence/uncertainty_study.py (issue 25 item 4) to compare the MDN's spread with the classifier's
own confidence and an ensemble's disagreement. Conventions: ``wrong`` is a boolean array (the prediction at the
operating threshold differs from the label); a *doubt* score is higher where the prediction deserves less trust
(``-|p - 0.5|``, a variance, a disagreement). Ties are treated in expectation over a random order, never by the
order the array happens to have.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auroc(doubt: np.ndarray, wrong: np.ndarray) -> float:
    """Area under the ROC curve of ``doubt`` for ``wrong``: the probability that a wrong prediction has more doubt
    than a right one, ties counting one half (the Mann-Whitney U statistic over both counts). NaN when every
    prediction is right or every one wrong (the AUROC is undefined).

    Args:
        doubt: ``(N,)`` scores, higher = less trusted.
        wrong: ``(N,)`` booleans.
    """
    doubt, wrong = np.asarray(doubt, dtype=np.float64).ravel(), np.asarray(wrong, dtype=bool).ravel()
    if doubt.shape != wrong.shape:
        raise ValueError(f"doubt and wrong must have the same length, got {doubt.shape} and {wrong.shape}")
    n_wrong, n_right = int(wrong.sum()), int((~wrong).sum())
    if n_wrong == 0 or n_right == 0:
        return float("nan")
    ranks = rankdata(doubt)  # average ranks for ties
    return float((ranks[wrong].sum() - n_wrong * (n_wrong + 1) / 2) / (n_wrong * n_right))


def risk_coverage(doubt: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve of keeping the least-doubted predictions: for ``k = 1 .. N`` kept, coverage ``k / N``
    and risk (the error rate among the kept), expected over random orders of tied scores.

    Returns:
        ``(coverage, risk)``, each ``(N,)``.
    """
    doubt, wrong = np.asarray(doubt, dtype=np.float64).ravel(), np.asarray(wrong, dtype=bool).ravel()
    n = len(doubt)
    order = np.argsort(doubt, kind="stable")
    sorted_doubt, sorted_wrong = doubt[order], wrong[order].astype(np.float64)
    # within a group of equal scores every member is equally likely at each position: spread the group's errors
    starts = np.flatnonzero(np.r_[True, sorted_doubt[1:] != sorted_doubt[:-1]])
    ends = np.r_[starts[1:], n]
    expected = np.empty(n)
    for s, e in zip(starts, ends, strict=True):
        expected[s:e] = sorted_wrong[s:e].mean()
    kept = np.arange(1, n + 1)
    return kept / n, np.cumsum(expected) / kept


def risk_at_coverage(doubt: np.ndarray, wrong: np.ndarray, coverage: float) -> float:
    """The expected error rate among the ``ceil(coverage N)`` least-doubted predictions (``0 < coverage <= 1``)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    _, risk = risk_coverage(doubt, wrong)
    if not len(risk):
        return float("nan")
    k = int(np.ceil(coverage * len(risk) - 1e-9))
    return float(risk[max(k, 1) - 1])


def weight_entropy(weights: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row of mixture weights, ``(N, C) -> (N,)``; ``0 log 0 = 0``."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0)
    return -terms.sum(axis=1)


__all__ = ["auroc", "risk_at_coverage", "risk_coverage", "weight_entropy"]
