"""Learned component mean directions (docs/math.md s.2b): the density and the Bhattacharyya bound against scipy and
numerical integration, the reduction to the paper's diagonal, the gradient that now sees the whole feature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate
from scipy.stats import multivariate_normal

from probmcl_med.core.likelihoods import component_log_densities
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.core.similarities import bhattacharyya_similarity, correlation_similarity
from probmcl_med.registry import LIKELIHOODS

torch.set_num_threads(1)


def mixture(batch: int, comps: int, n: int, seed: int, directions: torch.Tensor | None) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, comps, generator=g, dtype=torch.float64)
    means = 0.6 * torch.randn(batch, comps, generator=g, dtype=torch.float64)
    variances = 1 + torch.rand(batch, comps, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.softmax(logits, 1), means, variances, n, torch.log_softmax(logits, 1), directions)


def unit_rows(comps: int, n: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(comps, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=1)


def mean_vectors(m: GaussianMixture, i: int) -> np.ndarray:
    """(C, n) component mean vectors of sample i: mu_ik sqrt(n) u_k."""
    return (m.means[i, :, None] * math.sqrt(m.dim) * m.directions).numpy()


def test_density_matches_scipy_for_arbitrary_directions() -> None:
    m = mixture(4, 3, 5, seed=0, directions=unit_rows(3, 5, seed=1))
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = component_log_densities(m, z).numpy()
    for i in range(4):
        for k in range(3):
            reference = math.log(m.weights[i, k]) + multivariate_normal(
                mean_vectors(m, i)[k], float(m.variances[i, k]) * np.eye(5)
            ).logpdf(z[i].numpy())
            assert ours[i, k] == pytest.approx(reference, rel=1e-12, abs=1e-12)


def test_diagonal_directions_are_the_papers_model() -> None:
    n = 6
    plain = mixture(5, 4, n, seed=3, directions=None)
    diagonal = plain.with_directions(torch.full((4, n), 1 / math.sqrt(n), dtype=torch.float64))
    z = torch.randn(5, n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(component_log_densities(diagonal, z), component_log_densities(plain, z))
    torch.testing.assert_close(bhattacharyya_similarity(diagonal, diagonal), bhattacharyya_similarity(plain, plain))


def _bhattacharyya_integral(p_means: np.ndarray, p: tuple, q_means: np.ndarray, q: tuple) -> float:
    """integral sqrt(p q) over R^2 on a fine grid; p, q = (weights, variances), means (C, 2)."""
    grid = np.linspace(-9, 9, 1201)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    pts = np.stack([xx, yy], -1)

    def pdf(means: np.ndarray, weights: np.ndarray, variances: np.ndarray) -> np.ndarray:
        out = np.zeros(pts.shape[:-1])
        for mean, w, var in zip(means, weights, variances, strict=True):
            out += w * np.exp(-0.5 * ((pts - mean) ** 2).sum(-1) / var) / (2 * np.pi * var)
        return out

    values = np.sqrt(pdf(p_means, *p) * pdf(q_means, *q))
    return float(integrate.simpson(integrate.simpson(values, x=grid, axis=1), x=grid))


@pytest.mark.parametrize("comps", [1, 3])
def test_bhattacharyya_with_directions_against_numerical_integration(comps: int) -> None:
    directions = unit_rows(comps, 2, seed=5)
    m = mixture(3, comps, 2, seed=6, directions=directions)
    ours = bhattacharyya_similarity(m, m).numpy()
    for i in range(3):
        for j in range(3):
            exact = _bhattacharyya_integral(
                mean_vectors(m, i),
                (m.weights[i].numpy(), m.variances[i].numpy()),
                mean_vectors(m, j),
                (m.weights[j].numpy(), m.variances[j].numpy()),
            )
            if comps == 1:  # one component: the matched bound is the coefficient itself
                assert ours[i, j] == pytest.approx(exact, rel=1e-6, abs=1e-9)
            else:
                assert ours[i, j] <= exact + 1e-7


def test_gradient_through_z_sees_the_whole_feature() -> None:
    """With the diagonal, d NLL / d r lies on one direction (tests/test_likelihoods.py); with C learned directions it
    lies in the span of their projections (I - h h^T) u_k, and no longer on the diagonal's."""
    n, comps = 32, 4
    m = mixture(6, comps, n, seed=7, directions=unit_rows(comps, n, seed=8)).detach()
    g = torch.Generator().manual_seed(9)
    r = (torch.randn(6, n, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 1, 0]])
    z = F.normalize(r, dim=1)
    (grad,) = torch.autograd.grad(LIKELIHOODS.get("responsibility")(m, z, labels.double()), r)
    h = z.detach()
    eye = torch.eye(n, dtype=torch.float64)
    for i in range(6):
        tangent = eye - torch.outer(h[i], h[i])
        span = tangent @ m.directions.T  # (n, C)
        coef = torch.linalg.lstsq(span, grad[i]).solution
        assert (span @ coef - grad[i]).norm() <= 1e-9 * grad[i].norm() + 1e-18
        diagonal = F.normalize(tangent @ torch.ones(n, dtype=torch.float64), dim=0)
        off = grad[i] - (grad[i] @ diagonal) * diagonal
        assert off.norm() > 0.1 * grad[i].norm()


def test_mdn_learns_directions_from_the_diagonal_and_they_travel_with_the_mixture() -> None:
    torch.manual_seed(0)
    mdn = MixtureDensityNetwork(16, 3, hidden=(16, 8), mean_directions=True)
    h = F.normalize(torch.randn(8, 16), dim=1)
    m = mdn(h)
    torch.testing.assert_close(m.directions, torch.full((3, 16), 0.25))  # 1 / sqrt(16): the paper at the start
    assert mdn.spec["mean_directions"] is True
    labels = (torch.rand(8, 3) < 0.5).float()
    labels[:, 0] = 1.0
    LIKELIHOODS.get("responsibility")(m, h, labels).backward()
    assert mdn.directions.grad is not None and mdn.directions.grad.abs().sum() > 0
    m.validate()
    assert m[1:3].directions is m.directions and GaussianMixture.cat([m[:2], m[2:]]).directions is m.directions
    assert m.double().directions.dtype == torch.float64 and not m.detach().directions.requires_grad


def test_correlation_refuses_mean_directions_in_one_line() -> None:
    m = mixture(3, 2, 4, seed=10, directions=unit_rows(2, 4, seed=11))
    with pytest.raises(ValueError, match="correlation similarity assumes component means on the diagonal"):
        correlation_similarity(m, m)
    other = m.with_directions(unit_rows(2, 4, seed=12))
    with pytest.raises(ValueError, match="directions differ"):
        bhattacharyya_similarity(m, other)
    with pytest.raises(ValueError, match="unit vectors"):
        m.with_directions(2 * m.directions).validate()


def test_config_refuses_directions_with_the_correlation_kernel() -> None:
    from probmcl_med.config import load_config
    from probmcl_med.errors import ConfigError

    ok = ["mode=two-stage", "contrastive.component_means=learned_directions", "contrastive.similarity=bhattacharyya"]
    assert load_config(overrides=ok).contrastive.component_means == "learned_directions"
    with pytest.raises(ConfigError, match="similarity=bhattacharyya"):
        load_config(overrides=["mode=two-stage", "contrastive.component_means=learned_directions"])
