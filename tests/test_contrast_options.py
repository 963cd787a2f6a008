"""Issue 25's options that widen the contrast of the mixture similarity (docs/math.md s.2c, 2d, 7b, 7c), each against
something independent: numerical integration (quadrature in 1-d, a grid in 2-d, Monte Carlo in 3-d), scipy's normal
density, ``torch.autograd.gradcheck`` in float64, a float loop for the temperature, and bf16 autocast for NaN."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats

from probmcl_med.core.bhattacharyya import bhattacharyya_similarity, log_bhattacharyya_similarity
from probmcl_med.core.likelihoods import component_log_densities
from probmcl_med.core.logit_scale import LogitScale
from probmcl_med.core.losses import ProbContrastiveLoss, contrastive_anchor_losses, similarity_in_form
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.core.mixture import GaussianMixture, block_sizes
from probmcl_med.core.similarities import correlation_similarity, log_correlation_similarity

sys.path.insert(0, str(Path(__file__).parent))
from mixture_reference import integrate_pair, mixture_params

torch.set_num_threads(1)


def diagonal_mixture(batch: int, comps: int, n: int, *, seed: int, var: tuple[float, float], mean_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    logw = torch.log_softmax(torch.randn(batch, comps, generator=g, dtype=torch.float64), 1)
    means = mean_scale * torch.randn(batch, comps, generator=g, dtype=torch.float64)
    variances = var[0] + (var[1] - var[0]) * torch.rand(batch, comps, generator=g, dtype=torch.float64)
    return GaussianMixture(logw.exp(), means, variances, n, logw)


def block_mixture(batch: int, comps: int, n: int, d: int, *, seed: int, requires_grad: bool = False):
    g = torch.Generator().manual_seed(seed)
    leaves = [
        torch.randn(batch, comps, generator=g, dtype=torch.float64),
        0.8 * torch.randn(batch, comps, d, generator=g, dtype=torch.float64),
        0.5 + 2.0 * torch.rand(batch, comps, generator=g, dtype=torch.float64),
    ]
    leaves = [t.requires_grad_(requires_grad) for t in leaves]
    logw = torch.log_softmax(leaves[0], 1)
    return GaussianMixture(logw.exp(), leaves[1], leaves[2], n, logw), leaves


def mean_vectors(m: GaussianMixture, i: int) -> np.ndarray:
    """``(C, n)`` explicit mean vectors of sample ``i`` of a block-mean mixture (each block's value repeated)."""
    sizes = [int(s) for s in block_sizes(m.dim, m.mean_dim).tolist()]
    return np.repeat(m.means[i].detach().numpy(), sizes, axis=1)


def log_pdf(means: np.ndarray, variances: np.ndarray, log_weights: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log of an isotropic mixture density at points ``x`` (P, n), from scipy's normal."""
    n = means.shape[1]
    parts = [
        lw + stats.multivariate_normal(mu, v * np.eye(n)).logpdf(x)
        for mu, v, lw in zip(means, variances, log_weights, strict=True)
    ]
    return np.logaddexp.reduce(np.stack(parts), axis=0)


# ------------------------------------------------------------------------------------ block means (s.2c)
def test_block_sizes_split_every_coordinate() -> None:
    assert block_sizes(10, 3).tolist() == [4, 3, 3]
    assert block_sizes(7, 7).tolist() == [1] * 7
    with pytest.raises(ValueError):
        block_sizes(3, 4)


def test_block_mean_likelihood_equals_scipy() -> None:
    mixture, _ = block_mixture(4, 3, 7, 3, seed=1)
    z = F.normalize(torch.randn(4, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64), dim=1)
    got = component_log_densities(mixture, z)
    for i in range(4):
        mu = mean_vectors(mixture, i)
        for k in range(3):
            var = float(mixture.variances[i, k])
            ref = float(mixture.log_weights[i, k]) + stats.multivariate_normal(mu[k], var * np.eye(7)).logpdf(
                z[i].numpy()
            )
            assert got[i, k].item() == pytest.approx(ref, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("n", [2, 3])
def test_block_mean_bhattacharyya_exact_for_one_component(n: int) -> None:
    """With one component the bound is the coefficient itself: a 2-d grid (n = 2, d = 2: any isotropic Gaussians in
    the plane) or Monte Carlo, E_p[sqrt(q / p)] (n = 3, d = 2: blocks of 2 and 1 coordinates)."""
    a, _ = block_mixture(2, 1, n, 2, seed=3)
    b, _ = block_mixture(2, 1, n, 2, seed=4)
    got = bhattacharyya_similarity(a, b)
    rng = np.random.default_rng(0)
    for i in range(2):
        for j in range(2):
            mp, mq = mean_vectors(a, i), mean_vectors(b, j)
            vp, vq = a.variances[i].detach().numpy(), b.variances[j].detach().numpy()
            if n == 2:
                grid = np.linspace(-12, 12, 1601)
                xx, yy = np.meshgrid(grid, grid, indexing="ij")
                pts = np.stack([xx, yy], -1).reshape(-1, 2)
                vals = np.exp(0.5 * (log_pdf(mp, vp, np.zeros(1), pts) + log_pdf(mq, vq, np.zeros(1), pts)))
                exact = integrate.simpson(integrate.simpson(vals.reshape(len(grid), -1), x=grid, axis=1), x=grid)
                assert got[i, j].item() == pytest.approx(exact, rel=1e-6)
            else:
                x = mp[0] + math.sqrt(vp[0]) * rng.standard_normal((400_000, n))
                ratio = np.exp(0.5 * (log_pdf(mq, vq, np.zeros(1), x) - log_pdf(mp, vp, np.zeros(1), x)))
                se = ratio.std() / math.sqrt(len(ratio))
                assert abs(got[i, j].item() - ratio.mean()) < 5 * se + 1e-4


def test_block_mean_bhattacharyya_is_a_lower_bound_and_one_on_itself() -> None:
    a, _ = block_mixture(3, 3, 2, 2, seed=5)
    got = bhattacharyya_similarity(a, a)
    torch.testing.assert_close(got.diagonal(), torch.ones(3, dtype=torch.float64))
    grid = np.linspace(-12, 12, 1201)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    pts = np.stack([xx, yy], -1).reshape(-1, 2)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        lp = log_pdf(mean_vectors(a, i), a.variances[i].numpy(), a.log_weights[i].numpy(), pts)
        lq = log_pdf(mean_vectors(a, j), a.variances[j].numpy(), a.log_weights[j].numpy(), pts)
        exact = integrate.simpson(
            integrate.simpson(np.exp(0.5 * (lp + lq)).reshape(len(grid), -1), x=grid, axis=1), x=grid
        )
        assert got[i, j].item() <= exact + 1e-7


def test_block_means_reduce_to_the_paper_for_one_block() -> None:
    scalar = diagonal_mixture(4, 3, 9, seed=6, var=(1.0, 3.0), mean_scale=0.3)
    blocks = GaussianMixture(scalar.weights, scalar.means[:, :, None], scalar.variances, 9, scalar.logw)
    torch.testing.assert_close(bhattacharyya_similarity(blocks, blocks), bhattacharyya_similarity(scalar, scalar))
    z = F.normalize(torch.randn(4, 9, dtype=torch.float64), dim=1)
    torch.testing.assert_close(component_log_densities(blocks, z), component_log_densities(scalar, z))


def test_correlation_refuses_block_means() -> None:
    a, _ = block_mixture(2, 2, 4, 2, seed=7)
    with pytest.raises(ValueError, match="block means"):
        correlation_similarity(a, a)


def test_gradcheck_block_mean_log_bhattacharyya_float64() -> None:
    def fn(logits: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
        logw = torch.log_softmax(logits, 1)
        m = GaussianMixture(logw.exp(), means, variances, 5, logw)
        return log_bhattacharyya_similarity(m, m[1:])

    _, leaves = block_mixture(4, 3, 5, 2, seed=8, requires_grad=True)
    assert torch.autograd.gradcheck(fn, tuple(leaves))


# ------------------------------------------------------------------------------------ the log form (s.7b)
@pytest.mark.parametrize("n", [1, 2])
def test_log_correlation_equals_log_of_the_integrals(n: int) -> None:
    """Far-apart sharp components: similarities down to ~1e-12, where the log form keeps every digit."""
    a = diagonal_mixture(2, 2, n, seed=9, var=(0.05, 0.2), mean_scale=1.5)
    b = diagonal_mixture(2, 2, n, seed=10, var=(0.05, 0.2), mean_scale=1.5)
    got = log_correlation_similarity(a, b)
    for i in range(2):
        pp = integrate_pair(mixture_params(a, i), mixture_params(a, i), n, "product")
        for j in range(2):
            qq = integrate_pair(mixture_params(b, j), mixture_params(b, j), n, "product")
            pq = integrate_pair(mixture_params(a, i), mixture_params(b, j), n, "product")
            assert got[i, j].item() == pytest.approx(math.log(pq) - 0.5 * math.log(pp * qq), rel=1e-5, abs=1e-7)
    assert got.min() < -3  # informative: far from 1


@pytest.mark.parametrize("n", [1, 2])
def test_sharp_components_correlation_equals_numerical_integral(n: int) -> None:
    """Variances 0.01-0.05 (a variance floor below the paper's 1): the closed form still is the integral."""
    a = diagonal_mixture(3, 3, n, seed=11, var=(0.01, 0.05), mean_scale=0.3)
    got = correlation_similarity(a, a)
    for i in range(3):
        pp = integrate_pair(mixture_params(a, i), mixture_params(a, i), n, "product")
        for j in range(i + 1, 3):
            qq = integrate_pair(mixture_params(a, j), mixture_params(a, j), n, "product")
            pq = integrate_pair(mixture_params(a, i), mixture_params(a, j), n, "product")
            assert got[i, j].item() == pytest.approx(pq / math.sqrt(pp * qq), rel=2e-5, abs=1e-9)


@pytest.mark.parametrize("name", ["correlation", "bhattacharyya"])
def test_log_form_is_the_log_of_the_value_and_gradchecks(name: str) -> None:
    value_fn = {"correlation": correlation_similarity, "bhattacharyya": bhattacharyya_similarity}[name]
    log_fn = similarity_in_form(value_fn, "log")
    assert log_fn is value_fn.log_form  # the exact form, not log(value)
    a = diagonal_mixture(5, 3, 6, seed=12, var=(0.5, 2.0), mean_scale=0.5)
    torch.testing.assert_close(log_fn(a, a).exp(), value_fn(a, a), rtol=1e-12, atol=1e-14)

    def fn(logits: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
        logw = torch.log_softmax(logits, 1)
        m = GaussianMixture(logw.exp(), means, variances, 6, logw)
        return log_fn(m, m[2:])

    leaves = (a.logw.clone().requires_grad_(), a.means.clone().requires_grad_(), a.variances.clone().requires_grad_())
    assert torch.autograd.gradcheck(fn, leaves)


def test_log_form_of_a_plugin_without_one_is_a_clamped_log() -> None:
    def plugin(a: GaussianMixture, b: GaussianMixture) -> torch.Tensor:
        return torch.zeros(len(a), len(b))

    out = similarity_in_form(plugin, "log")(
        diagonal_mixture(2, 2, 3, seed=0, var=(1, 2)), diagonal_mixture(3, 2, 3, seed=1, var=(1, 2))
    )
    assert torch.isfinite(out).all() and out.max() == pytest.approx(math.log(torch.finfo(torch.float32).tiny))


# ------------------------------------------------------------------------------------ learned temperature (s.7c)
def test_logit_scale_bounds_start_and_gradcheck() -> None:
    scale = LogitScale(0.2, tau_min=0.01, tau_max=1.0, gain=50.0).double()
    assert 1.0 / float(scale().detach()) == pytest.approx(0.2, rel=1e-6)  # the parameter starts in float32
    with torch.no_grad():
        for value, tau in ((1e3, 0.01), (-1e3, 1.0)):
            scale.theta.fill_(value)
            assert 1.0 / float(scale().detach()) == pytest.approx(tau, rel=1e-9)
        scale.theta.fill_(0.01)
    theta = scale.theta.detach().clone().requires_grad_()

    def s_of(t: torch.Tensor) -> torch.Tensor:
        return 1.0 + 99.0 * torch.sigmoid(50.0 * t)

    assert torch.autograd.gradcheck(s_of, (theta,))
    (grad,) = torch.autograd.grad(scale(), scale.theta)
    sig = 1 / (1 + math.exp(-0.5))
    assert float(grad) == pytest.approx(50 * 99 * sig * (1 - sig), rel=1e-12)
    with pytest.raises(ValueError):
        LogitScale(0.005, tau_min=0.01)


def test_learned_temperature_loss_equals_the_loss_at_that_fixed_tau() -> None:
    mixture = diagonal_mixture(8, 3, 16, seed=13, var=(1.0, 2.0), mean_scale=0.2)
    labels = (torch.rand(8, 3, generator=torch.Generator().manual_seed(14)) < 0.5).double()
    labels[4:] = labels[:4]
    scale = LogitScale(0.2, gain=10.0).double()
    with torch.no_grad():
        scale.theta.fill_(0.07)
    for form in ("value", "log"):
        learned = ProbContrastiveLoss("bhattacharyya", alpha=0.5, tau=0.2, form=form, temperature=scale)
        fixed = ProbContrastiveLoss("bhattacharyya", alpha=0.5, tau=1.0 / float(scale().detach()), form=form)
        assert float(learned(mixture, labels)) == pytest.approx(float(fixed(mixture, labels)), rel=1e-12)
    loss = ProbContrastiveLoss("bhattacharyya", tau=0.2, form="log", temperature=scale)(mixture, labels)
    (grad,) = torch.autograd.grad(loss, scale.theta)
    assert grad.abs() > 0 and list(ProbContrastiveLoss(temperature=scale).parameters()) == []


def test_anchor_losses_with_a_tensor_tau_equal_a_float_loop() -> None:
    g = torch.Generator().manual_seed(15)
    sim = -3 * torch.rand(5, 5, generator=g, dtype=torch.float64)
    overlap = torch.rand(5, 5, generator=g, dtype=torch.float64)
    losses, valid = contrastive_anchor_losses(
        sim, overlap, torch.arange(5), 0.4, torch.tensor(0.3, dtype=torch.float64)
    )
    for i in range(5):
        positives = [j for j in range(5) if j != i and overlap[i, j] >= 0.4]
        assert bool(valid[i]) == bool(positives)
        if positives:
            denom = math.log(sum(math.exp(sim[i, m] / 0.3) for m in range(5) if m != i))
            ref = -sum(float(overlap[i, j]) * (float(sim[i, j]) / 0.3 - denom) for j in positives) / len(positives)
            assert float(losses[i]) == pytest.approx(ref, rel=1e-12)


# ------------------------------------------------------------------------------------ the MDN's variance options
def test_mdn_variance_options_against_the_formula() -> None:
    torch.manual_seed(0)
    h = F.normalize(torch.randn(6, 12), dim=1)
    for covariance in ("isotropic", "shared", "fixed"):
        mdn = MixtureDensityNetwork(12, 4, hidden=(8,), variance_floor=0.1, variance_scale=0.1, covariance=covariance)
        with torch.no_grad():
            mdn.out.weight.normal_()
            a_var = mdn.out(mdn.hidden(h))[:, 8:]
        var = mdn(h).variances
        if covariance == "isotropic":
            ref = 0.1 + 0.1 * (F.elu(a_var) + 1)
        elif covariance == "shared":
            ref = (0.1 + 0.1 * (F.elu(a_var.mean(1, keepdim=True)) + 1)).expand(6, 4)
        else:
            ref = torch.full((6, 4), 0.2)
        torch.testing.assert_close(var, ref)
        assert (var >= 0.1).all()
    paper = MixtureDensityNetwork(12, 4, hidden=(8,))
    with torch.no_grad():
        paper.out.weight.normal_()
        a_var = paper.out(paper.hidden(h))[:, 8:]
    assert torch.equal(paper(h).variances, F.elu(a_var) + 2.0)


def test_mdn_block_means_and_temperature_round_trip_through_spec() -> None:
    mdn = MixtureDensityNetwork(12, 4, hidden=(8,), mean_dim=3, temperature={"tau": 0.2, "gain": 5.0})
    out = mdn(F.normalize(torch.randn(5, 12), dim=1))
    assert out.means.shape == (5, 4, 3) and mdn.out.out_features == 5 * 4
    out.validate()
    with torch.no_grad():
        mdn.logit_scale.theta.fill_(0.3)
    copy = MixtureDensityNetwork(**{k: v for k, v in mdn.spec.items()})
    copy.load_state_dict(mdn.state_dict())
    assert torch.equal(copy.logit_scale().detach(), mdn.logit_scale().detach())
    assert any(p is mdn.logit_scale.theta for p in mdn.parameters())


# ------------------------------------------------------------------------------------ no NaN, also under AMP
@pytest.mark.parametrize("similarity", ["correlation", "bhattacharyya"])
def test_log_form_and_learned_tau_finite_under_cpu_bf16_autocast(similarity: str) -> None:
    torch.manual_seed(1)
    mdn = MixtureDensityNetwork(16, 5, hidden=(32,), variance_floor=0.01, variance_scale=0.01, temperature={"tau": 0.2})
    with torch.no_grad():
        mdn.out.weight.mul_(400.0)  # extreme mixtures: means ~ +-100, variances 0.01 .. 1e3, weights near 0
    h = F.normalize(torch.randn(12, 16), dim=1).requires_grad_()
    labels = (torch.rand(12, 5) < 0.4).float()
    labels[6:] = labels[:6]
    loss_fn = ProbContrastiveLoss(similarity, form="log", temperature=mdn.logit_scale)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixture = mdn(h)
        loss = loss_fn(mixture, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    grads = [h.grad, mdn.logit_scale.theta.grad, *(p.grad for p in mdn.parameters() if p.grad is not None)]
    assert all(torch.isfinite(g).all() for g in grads)
