"""Per-class temperature scaling of multi-label logits (Guo, Pleiss, Sun & Weinberger, ICML 2017, s.4.2).

Each class c gets one temperature T_c > 0 and its calibrated probability is ``sigmoid(z_c / T_c)``. T_c is the
minimiser of the class's mean binary negative log-likelihood on held-out data (the validation split):

    NLL_c(T) = (1 / N) * sum_n softplus(z_nc / T) - y_nc * z_nc / T,       softplus(u) = log(1 + e^u)

which is convex in a = 1 / T (a logistic loss of a * z), so it has one minimum and is unimodal in log T too; it is
found by golden-section search over log T in ``[T_MIN, T_MAX]``, every class at once. Dividing by T > 0 keeps the
sign of each logit: the calls at threshold 0.5 (z >= 0) and the ranking of each class (its AP) do not change; only
how far from 0.5 the probabilities are. A class without both a positive and a negative in the fitting data keeps
T = 1 (its NLL falls towards a bound and says nothing about calibration).
"""

from __future__ import annotations

import math

import numpy as np

T_MIN, T_MAX = 0.05, 20.0
"""The search interval of every temperature: a fitted value at a bound means the data wanted more than this."""
GOLDEN_ITERATIONS = 80
"""Golden-section steps: the bracket on log T shrinks by 0.618 each, to under 1e-15 of the interval."""


def binary_nll(logits: np.ndarray, targets: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Per class, the mean binary NLL (nats) of ``sigmoid(logits / T)`` against ``targets``.

    Args:
        logits: (N, C) float logits.
        targets: (N, C) 0/1 labels.
        temperatures: (C,) or (K, C) temperatures > 0 (K candidates per class, evaluated at once).

    Returns:
        (C,) or (K, C) NLL, computed stably as ``logaddexp(0, u) - y * u`` with ``u = z / T``.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    t = np.asarray(temperatures, dtype=np.float64)
    u = z / t[..., None, :]  # (..., N, C)
    return (np.logaddexp(0.0, u) - y * u).mean(axis=-2)


def fit_temperatures(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """One temperature per class minimising its validation NLL (module docstring).

    Args:
        logits: (N, C) raw logits of a held-out split.
        targets: (N, C) 0/1 labels.

    Returns:
        (C,) float64 temperatures in [T_MIN, T_MAX]; 1.0 for a class without both labels in ``targets``.

    Raises:
        ValueError: shapes differ, fewer than one sample, or a non-finite logit.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if z.ndim != 2 or z.shape != y.shape or z.shape[0] == 0:
        raise ValueError(f"logits {z.shape} and targets {y.shape} must both be (N, C) with N >= 1")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite to fit temperatures")
    lo = np.full(z.shape[1], math.log(T_MIN))
    hi = np.full(z.shape[1], math.log(T_MAX))
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = binary_nll(z, y, np.exp(a)), binary_nll(z, y, np.exp(b))
    for _ in range(GOLDEN_ITERATIONS):
        left = fa <= fb  # the minimum lies in [lo, b]: drop (b, hi]
        hi = np.where(left, b, hi)
        lo = np.where(left, lo, a)
        a_new = np.where(left, hi - ratio * (hi - lo), b)
        b_new = np.where(left, a, lo + ratio * (hi - lo))
        f_known = np.where(left, fa, fb)
        probe = np.where(left, a_new, b_new)
        f_probe = binary_nll(z, y, np.exp(probe))
        fa = np.where(left, f_probe, f_known)
        fb = np.where(left, f_known, f_probe)
        a, b = a_new, b_new
    fitted = np.exp((lo + hi) / 2.0)
    both = (y.max(axis=0) > 0) & (y.min(axis=0) < 1)
    return np.where(both, fitted, 1.0)


def calibrated_probabilities(logits: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """(N, C) float64 ``sigmoid(logits / T)`` per class, computed without overflow."""
    u = np.asarray(logits, dtype=np.float64) / np.asarray(temperatures, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -u))


def threshold_on_calibrated_scale(thresholds: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """Per class, the calibrated-probability threshold that calls exactly the images a raw threshold calls.

    ``sigmoid(z / T) >= sigmoid(logit(t) / T)`` iff ``z >= logit(t)`` (both maps are increasing), so a raw threshold
    ``t`` becomes ``sigmoid(logit(t) / T)``; 0 and 1 stay 0 and 1, 0.5 stays 0.5.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    temps = np.asarray(temperatures, dtype=np.float64)
    with np.errstate(divide="ignore"):
        raw_logit = np.log(t) - np.log1p(-t)
    out = np.exp(-np.logaddexp(0.0, -raw_logit / temps))
    return np.where(t <= 0.0, 0.0, np.where(t >= 1.0, 1.0, out))
