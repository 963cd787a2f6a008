"""Pieces shared by the similarities between isotropic Gaussian mixtures (docs/math.md s.4-5): the variance factor
of two isotropic components and the check that two batches of mixtures can be compared."""

from __future__ import annotations

import torch
from torch import Tensor

from probmcl_med.core.mixture import GaussianMixture


def log_variance_ratio(sd_a: Tensor, sd_b: Tensor) -> Tensor:
    """``log((s + t) / (2 sqrt(s t)))`` for standard deviations ``sqrt(s), sqrt(t)`` (broadcasting), >= 0.

    Computed as ``log1p((sd_a - sd_b)^2 / (2 sd_a sd_b))``: exact to relative precision when ``s ~ t``.
    """
    diff = sd_a - sd_b
    return torch.log1p(diff * diff / (2 * sd_a * sd_b))


def check_pair(a: GaussianMixture, b: GaussianMixture) -> None:
    """Raise ValueError unless ``a`` and ``b`` share the dimension, the components, the mean shape and directions."""
    if a.dim != b.dim:
        raise ValueError(f"cannot compare mixtures in R^{a.dim} and R^{b.dim}")
    if a.num_components != b.num_components:
        raise ValueError(f"cannot compare mixtures with {a.num_components} and {b.num_components} components")
    if a.means.shape[2:] != b.means.shape[2:]:
        raise ValueError(f"cannot compare mixtures with {a.mean_dim} and {b.mean_dim} numbers per component mean")
    same = a.directions is b.directions or (
        a.directions is not None and b.directions is not None and torch.equal(a.directions, b.directions)
    )
    if not same:
        raise ValueError("cannot compare mixtures whose component mean directions differ")


__all__ = ["check_pair", "log_variance_ratio"]
