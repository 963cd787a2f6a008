"""Independent references for the mixture math tests and the contrastive benchmark (not part of the library).

Written straight from docs/math.md sections 2 and 4 with plain tensor operations: the dense correlation materialises
the ``(B, M, C, C)`` tensor of component pairs and keeps the ``(2 pi)^(-n/2)`` factor; the numerical integrals use
scipy quadrature (n = 1) and a fine grid (n = 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate
from torch import Tensor

from probmcl_med.core.mixture import GaussianMixture


def dense_log_inner_product(a: GaussianMixture, b: GaussianMixture) -> Tensor:
    """``log integral p_i q_j`` for all pairs, ``(B, M)``, through the full ``(B, M, C, C)`` tensor (math.md s.4)."""
    n = a.dim
    s = a.variances[:, None, :, None] + b.variances[None, :, None, :]
    d = a.means[:, None, :, None] - b.means[None, :, None, :]
    log_w = a.weights.log()[:, None, :, None] + b.weights.log()[None, :, None, :]
    terms = log_w - 0.5 * n * torch.log(2 * math.pi * s) - 0.5 * n * d.square() / s
    return terms.flatten(2).logsumexp(-1)


def dense_correlation(a: GaussianMixture, b: GaussianMixture) -> Tensor:
    """Correlation coefficient ``K(p, q) / sqrt(K(p, p) K(q, q))``, dense, in the inputs' dtype."""
    cross = dense_log_inner_product(a, b)
    self_a = dense_log_inner_product(a, a).diagonal()
    self_b = self_a if a is b else dense_log_inner_product(b, b).diagonal()
    return (cross - 0.5 * self_a[:, None] - 0.5 * self_b[None, :]).exp()


def mixture_pdf(weights: np.ndarray, means: np.ndarray, variances: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Density of one isotropic mixture at ``points`` (..., n): ``sum_k pi_k N(z; mu_k 1, var_k I_n)``."""
    n = points.shape[-1]
    out = np.zeros(points.shape[:-1])
    for w, mu, var in zip(weights, means, variances, strict=True):
        sq = ((points - mu) ** 2).sum(-1)
        out += w * np.exp(-0.5 * sq / var) / (2 * np.pi * var) ** (n / 2)
    return out


def integrate_pair(p: tuple[np.ndarray, ...], q: tuple[np.ndarray, ...], n: int, kind: str) -> float:
    """``integral p q`` (kind "product") or ``integral sqrt(p q)`` (kind "sqrt") over R^n, n in {1, 2}."""

    def f(values_p: np.ndarray, values_q: np.ndarray) -> np.ndarray:
        return values_p * values_q if kind == "product" else np.sqrt(values_p * values_q)

    centers = np.concatenate([p[1], q[1]])
    spread = 12 * math.sqrt(max(p[2].max(), q[2].max()))
    lo, hi = centers.min() - spread, centers.max() + spread
    if n == 1:

        def g(x: float) -> float:
            pt = np.array([[x]])
            return float(f(mixture_pdf(*p, pt), mixture_pdf(*q, pt))[0])

        value, _ = integrate.quad(g, lo, hi, points=sorted(centers), limit=400, epsabs=1e-13, epsrel=1e-10)
        return value
    if n == 2:
        grid = np.linspace(lo, hi, 1201)
        xx, yy = np.meshgrid(grid, grid, indexing="ij")
        pts = np.stack([xx, yy], -1)
        vals = f(mixture_pdf(*p, pts), mixture_pdf(*q, pts))
        return float(integrate.simpson(integrate.simpson(vals, x=grid, axis=1), x=grid))
    raise ValueError("numerical integration only for n = 1 or 2")


def mixture_params(m: GaussianMixture, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(weights, means, variances)`` of sample ``i`` as float64 numpy arrays."""
    return tuple(t[i].detach().double().numpy() for t in (m.weights, m.means, m.variances))  # type: ignore[return-value]


def extreme_mixture(
    rows: int, comps: int, dim: int, dtype: torch.dtype, *, seed: int, mean_range: float = 1e3
) -> tuple[list[Tensor], GaussianMixture]:
    """Leaves ``(logits, means, variances)`` in ``dtype`` and their mixture, spanning the stress range of the tests:
    means in [-mean_range, mean_range] (rows 0 and 1 equal, row 2 within 1e-3 of row 1), variances log-uniform in
    [1, 1e4] (row 3 all 1, row 4 all 1e4), weights from logits of scale 20 (some near 0)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(rows, comps).uniform_(-mean_range, mean_range, generator=g)
    means[1] = means[0]
    means[2] = means[1] + 1e-3
    variances = torch.exp(torch.empty(rows, comps).uniform_(0, math.log(1e4), generator=g))
    variances[3], variances[4] = 1.0, 1e4
    logits = 20 * torch.randn(rows, comps, generator=g)
    params = [t.to(dtype).requires_grad_() for t in (logits, means, variances)]
    return params, GaussianMixture(torch.softmax(params[0].float(), 1).to(dtype), params[1], params[2], dim)
