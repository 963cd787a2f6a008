"""NLL terms against scipy's multivariate normal densities."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from probmcl_med.core.likelihoods import density_nll, responsibility_nll
from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.registry import LIKELIHOODS

sys.path.insert(0, str(Path(__file__).parent))
from mixture_reference import extreme_mixture

torch.set_num_threads(1)


def setup(batch: int = 6, comps: int = 4, n: int = 5, seed: int = 0) -> tuple[GaussianMixture, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, comps, generator=g, dtype=torch.float64, requires_grad=True)
    means = (0.5 * torch.randn(batch, comps, generator=g, dtype=torch.float64)).requires_grad_()
    variances = (1 + torch.rand(batch, comps, generator=g, dtype=torch.float64)).requires_grad_()
    z = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.softmax(logits, 1), means, variances, n), z


def scipy_component_logpdf(m: GaussianMixture, z: torch.Tensor) -> np.ndarray:
    """``log pi_k + log N(z_i; mu_ik 1, var_ik I)`` with scipy, ``(B, C)``."""
    out = np.zeros(tuple(m.weights.shape))
    n = m.dim
    for i in range(len(m)):
        for k in range(m.num_components):
            mean = np.full(n, m.means[i, k].item())
            cov = m.variances[i, k].item() * np.eye(n)
            out[i, k] = math.log(m.weights[i, k].item()) + multivariate_normal(mean, cov).logpdf(z[i].numpy())
    return out


def test_registered() -> None:
    assert LIKELIHOODS.get("density") is density_nll and LIKELIHOODS.get("responsibility") is responsibility_nll


def test_density_matches_scipy() -> None:
    m, z = setup()
    expected = -logsumexp(scipy_component_logpdf(m, z), axis=1).mean()
    assert density_nll(m, z, None).item() == pytest.approx(expected, rel=1e-12)


def test_responsibility_matches_explicit_posterior() -> None:
    m, z = setup()
    labels = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 1, 0]]).float()
    comp = scipy_component_logpdf(m, z)
    terms = []
    for i in range(6):
        pos = [k for k in range(4) if labels[i, k] > 0]
        if pos:  # samples without a positive label are skipped
            terms.append(-(logsumexp(comp[i, pos]) - logsumexp(comp[i])))
    assert responsibility_nll(m, z, labels).item() == pytest.approx(float(np.mean(terms)), rel=1e-12)
    # gradients stay finite although two rows have no positive label
    grads = torch.autograd.grad(responsibility_nll(m, z, labels), [m.means, m.variances])
    assert all(torch.isfinite(g).all() for g in grads)


def test_responsibility_without_any_positive_is_a_zero_that_backpropagates() -> None:
    m, z = setup()
    loss = responsibility_nll(m, z, torch.zeros(6, 4))
    assert loss.item() == 0.0
    grads = torch.autograd.grad(loss, [m.means, m.variances])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_shape_errors() -> None:
    m, z = setup()
    with pytest.raises(ValueError, match="z must be"):
        density_nll(m, z[:, :3], None)
    with pytest.raises(ValueError, match="labels"):
        responsibility_nll(m, z, torch.ones(6, 3))


@pytest.mark.parametrize("n", [1, 4096])
@pytest.mark.parametrize(
    "dtype, mean_range",
    [
        (torch.float32, 1e3),
        (torch.bfloat16, 1e3),
        # fp16 tops out at 65504: with |mu| = 1e3 and n = 4096 the true gradient (~1e7) is not representable in an
        # fp16 leaf (GradScaler's business); the loss is still finite, and with |mu| <= 1 the gradients are too
        (torch.float16, 1.0),
    ],
)
@pytest.mark.parametrize("name", ["density", "responsibility"])
def test_no_nan_for_extreme_inputs(n: int, dtype: torch.dtype, mean_range: float, name: str) -> None:
    batch, comps = 5, 3
    params, m = extreme_mixture(batch, comps, n, dtype, seed=1, mean_range=mean_range)
    g = torch.Generator().manual_seed(2)
    z = torch.nn.functional.normalize(torch.randn(batch, n, generator=g), dim=1).to(dtype)
    z[1] = mean_range
    labels = (torch.rand(batch, comps, generator=g) < 0.5).float()
    labels[0] = torch.tensor([1.0, 0.0, 0.0])
    loss = LIKELIHOODS.get(name)(m, z, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    assert all(gr is None or torch.isfinite(gr).all() for gr in grads)
    if dtype == torch.float16:  # the same extreme means still give a finite loss
        wide = GaussianMixture(m.weights, (1e3 * params[1].detach()).to(dtype), m.variances, n)
        assert torch.isfinite(LIKELIHOODS.get(name)(wide, (1e3 * z.float()).to(dtype), labels))


@pytest.mark.parametrize("name", ["density", "responsibility"])
def test_gradient_through_z_lies_on_the_projected_diagonal(name: str) -> None:
    """With component means mu_k 1 and z = r / |r|, the NLL sees z only through sum_i z_i (docs/math.md s.2), so its
    gradient w.r.t. the raw feature r, the mixture held fixed, is parallel to d(sum_i z_i)/dr = (I - z z^T) 1 / |r|."""
    mixture, _ = setup(batch=6, comps=4, n=32, seed=3)
    mixture = mixture.detach()
    g = torch.Generator().manual_seed(4)
    r = (torch.randn(6, 32, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    labels = (torch.rand(6, 4, generator=g) < 0.5).double()
    labels[:, 0], labels[:, 3] = 1.0, 0.0  # some but not all positive: the responsibility NLL is not constant
    z = torch.nn.functional.normalize(r, dim=1)
    (grad,) = torch.autograd.grad(LIKELIHOODS.get(name)(mixture, z, labels), r)
    zd = z.detach()
    direction = torch.nn.functional.normalize(torch.ones_like(zd) - zd * zd.sum(1, keepdim=True), dim=1)
    along = (grad * direction).sum(1, keepdim=True)
    off = (grad - along * direction).norm(dim=1)
    assert grad.norm(dim=1).max() > 1e-3  # the test is not vacuous
    assert (off <= 1e-10 * grad.norm(dim=1) + 1e-20).all()
