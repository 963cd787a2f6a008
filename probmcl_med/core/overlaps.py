"""Label overlaps ``D(y_i, y_j)`` that choose and weight the positives of the contrastive loss (docs/math.md s.6).

Each registered entry is ``f(ya (B, C), yb (M, C)) -> (B, M)`` with values in [0, 1]. Labels are multi-hot vectors or
soft labels in [0, 1]; the result is float32 (float64 for float64 inputs) and carries no gradient to the labels'
producers beyond what the formulas give.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probmcl_med.core.mixture import compute_dtype
from probmcl_med.registry import OVERLAPS


def _prepare(ya: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
    if ya.ndim != 2 or yb.ndim != 2 or ya.shape[1] != yb.shape[1]:
        raise ValueError(f"label overlaps need (B, C) and (M, C) tensors, got {tuple(ya.shape)} and {tuple(yb.shape)}")
    dtype = compute_dtype(ya, yb)
    return ya.to(dtype), yb.to(dtype)


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0``, clamped to [0, 1]."""
    positive = den > 0
    return torch.where(positive, num / torch.where(positive, den, torch.ones_like(den)), torch.zeros_like(num)).clamp(
        0.0, 1.0
    )


@OVERLAPS.register("jaccard")
def jaccard(ya: Tensor, yb: Tensor) -> Tensor:
    """Jaccard index ``|y_i AND y_j| / |y_i OR y_j|`` (docs/math.md s.6); 0 when both label sets are empty.

    Soft labels use the weighted (Ruzicka) form ``sum_c min(a_c, b_c) / sum_c max(a_c, b_c)``, which equals the set
    formula on multi-hot vectors. Computed without a ``(B, M, C)`` tensor: with ``L1 = sum_c |a_c - b_c|``,
    ``sum min = (|a| + |b| - L1) / 2`` and ``sum max = (|a| + |b| + L1) / 2``.

    Args:
        ya: ``(B, C)`` labels in [0, 1]; yb: ``(M, C)`` labels in [0, 1].

    Returns:
        ``(B, M)`` overlaps in [0, 1].
    """
    ya, yb = _prepare(ya, yb)
    total = ya.sum(1)[:, None] + yb.sum(1)[None, :]
    l1 = torch.cdist(ya, yb, p=1.0) if ya.shape[0] and yb.shape[0] else total.new_zeros(total.shape)
    return _safe_ratio(total - l1, total + l1)


@OVERLAPS.register("cosine")
def cosine(ya: Tensor, yb: Tensor) -> Tensor:
    """Cosine similarity ``y_i . y_j / (||y_i|| ||y_j||)`` of label vectors (docs/math.md s.6); 0 for a zero vector.

    The paper prints squared norms in the denominator, a typo (two identical two-label vectors would score 0.5);
    this is the cosine. Soft labels in [0, 1] give values in [0, 1].

    Args:
        ya: ``(B, C)`` labels in [0, 1]; yb: ``(M, C)`` labels in [0, 1].

    Returns:
        ``(B, M)`` overlaps in [0, 1].
    """
    ya, yb = _prepare(ya, yb)
    # sqrt(|a|^2 |b|^2) rather than |a| |b|: exact for multi-hot labels, so identical sets give exactly 1 (alpha = 1)
    return _safe_ratio(ya @ yb.T, torch.sqrt(ya.square().sum(1)[:, None] * yb.square().sum(1)[None, :]))


__all__ = ["cosine", "jaccard"]
