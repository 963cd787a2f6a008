"""The Bhattacharyya similarity between batches of isotropic Gaussian mixtures (docs/math.md s.5), and its exact
log form (s.7b). Registered under ``bhattacharyya`` by :mod:`probmcl_med.core.similarities`."""

from __future__ import annotations

import torch
from torch import Tensor

from probmcl_med.core.component_pairs import check_pair, log_variance_ratio
from probmcl_med.core.mixture import GaussianMixture, block_sizes, compute_dtype


def log_bhattacharyya_similarity(a: GaussianMixture, b: GaussianMixture) -> Tensor:
    """``log`` of :func:`bhattacharyya_similarity`, ``(len(a), len(b))``, <= 0: a log-sum-exp over the matched
    components, exact in the log domain (docs/math.md s.5 and s.7b), finite for every valid input."""
    check_pair(a, b)
    dtype = compute_dtype(a.weights, a.means, a.variances, b.weights, b.means, b.variances)
    n = a.dim
    la, lb = a.log_weights.to(dtype), b.log_weights.to(dtype)
    va, vb = a.variances.to(dtype), b.variances.to(dtype)
    d = a.means.to(dtype)[:, None] - b.means.to(dtype)[None, :]
    # ||m_a - m_b||^2: n (mu_a - mu_b)^2, or sum_j n_j (mu_aj - mu_bj)^2 for block means (s.2c)
    sq = (block_sizes(n, a.mean_dim, d.device, dtype) * d.square()).sum(dim=3) if d.ndim == 4 else n * d.square()
    terms = (
        0.5 * (la[:, None, :] + lb[None, :, :])
        - 0.25 * sq / (va[:, None, :] + vb[None, :, :])
        - (n / 2) * log_variance_ratio(va.sqrt()[:, None, :], vb.sqrt()[None, :, :])
    )
    return torch.logsumexp(terms, dim=2).clamp(max=0.0)


def bhattacharyya_similarity(a: GaussianMixture, b: GaussianMixture) -> Tensor:
    """Matched-component lower bound of the Bhattacharyya coefficient (docs/math.md section 5).

    ``BC(p, q) = integral sqrt(p q) >= sum_k sqrt(pi_k rho_k) BC(N(mu_k 1, var_k I), N(nu_k 1, s_k I))``, pointwise
    by Cauchy-Schwarz (``sqrt(sum_k x_k)(sum_k y_k) >= sum_k sqrt(x_k y_k)``); component k belongs to class k in both
    mixtures, so matching k with k is the natural pairing. With
    ``log BC(N_k, M_k) = -||m_k - m'_k||^2 / (4 (var_k + s_k)) - (n/2) log((var_k + s_k) / (2 sqrt(var_k s_k)))``
    and ``||m_k - m'_k||^2 = n (mu_k - nu_k)^2`` for means on the diagonal.
    This is a LOWER bound: it equals the coefficient for single-component mixtures and when ``p == q`` (then 1),
    and is below it otherwise. With learned mean directions (docs/math.md s.2b) component k of both mixtures lies
    along the same unit ``u_k``, the squared distance of the matched means is still ``n (mu_k - nu_k)^2`` and the
    formula holds unchanged; with block means (s.2c) it is ``sum_j n_j (mu_kj - nu_kj)^2``. (The all-pairs sum is an
    upper bound that can exceed 1; it is not offered.) Cost O(B M C d), memory a few ``(B, M, C)`` tensors.

    Returns:
        ``(len(a), len(b))`` values in [0, 1], float32 (float64 for float64 inputs).
    """
    return log_bhattacharyya_similarity(a, b).exp()


__all__ = ["bhattacharyya_similarity", "log_bhattacharyya_similarity"]
