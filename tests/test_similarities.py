"""Mixture similarities against numerical integration, a dense reference, gradcheck and extreme inputs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.core.similarities import (
    DEFAULT_TILE_ELEMENTS,
    DEFAULT_TILE_ELEMENTS_CUDA,
    _CrossLogK,
    _SelfLogK,
    bhattacharyya_similarity,
    correlation_similarity,
    default_block_size,
)
from probmcl_med.registry import SIMILARITIES

sys.path.insert(0, str(Path(__file__).parent))
from mixture_reference import dense_correlation, extreme_mixture, integrate_pair, mixture_params

torch.set_num_threads(1)


def random_mixture(
    batch: int,
    components: int,
    dim: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    mean_scale: float = 1.0,
    var_range: tuple[float, float] = (1.0, 3.0),
    requires_grad: bool = False,
) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, components, generator=g, dtype=torch.float64)
    means = torch.randn(batch, components, generator=g, dtype=torch.float64) * mean_scale
    lo, hi = var_range
    variances = lo + (hi - lo) * torch.rand(batch, components, generator=g, dtype=torch.float64)
    params = [t.to(dtype).requires_grad_(requires_grad) for t in (logits, means, variances)]
    return GaussianMixture(torch.softmax(params[0], 1), params[1], params[2], dim)


SIMS = {"correlation": correlation_similarity, "bhattacharyya": bhattacharyya_similarity}


def test_registered_names() -> None:
    assert {"correlation", "bhattacharyya"} <= set(SIMILARITIES.names())
    assert SIMILARITIES.get("correlation") is correlation_similarity
    assert SIMILARITIES.get("bhattacharyya") is bhattacharyya_similarity


# ------------------------------------------------------------------------------------ against numerical integration
@pytest.mark.parametrize("n", [1, 2])
def test_correlation_equals_numerical_integral(n: int) -> None:
    a = random_mixture(3, 3, n, seed=1, mean_scale=1.5)
    b = random_mixture(2, 3, n, seed=2, mean_scale=1.5)
    sim = correlation_similarity(a, b)
    self_a = [integrate_pair(mixture_params(a, i), mixture_params(a, i), n, "product") for i in range(len(a))]
    self_b = [integrate_pair(mixture_params(b, j), mixture_params(b, j), n, "product") for j in range(len(b))]
    for i, pp in enumerate(self_a):
        for j, qq in enumerate(self_b):
            pq = integrate_pair(mixture_params(a, i), mixture_params(b, j), n, "product")
            assert sim[i, j].item() == pytest.approx(pq / math.sqrt(pp * qq), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n", [1, 2])
def test_bhattacharyya_is_lower_bound_of_numerical_integral(n: int) -> None:
    a = random_mixture(3, 3, n, seed=3, mean_scale=1.0)
    b = random_mixture(2, 3, n, seed=4, mean_scale=1.0)
    bound = bhattacharyya_similarity(a, b)
    gaps = []
    for i in range(len(a)):
        for j in range(len(b)):
            exact = integrate_pair(mixture_params(a, i), mixture_params(b, j), n, "sqrt")
            assert bound[i, j].item() <= exact + 1e-7
            gaps.append(exact - bound[i, j].item())
    assert max(gaps) > 1e-3  # a real bound, not an equality, for multi-component mixtures


@pytest.mark.parametrize("n", [1, 2])
def test_bhattacharyya_exact_for_single_components(n: int) -> None:
    a = random_mixture(3, 1, n, seed=5, mean_scale=1.0, var_range=(1.0, 6.0))
    b = random_mixture(2, 1, n, seed=6, mean_scale=1.0, var_range=(1.0, 6.0))
    sim = bhattacharyya_similarity(a, b)
    for i in range(len(a)):
        for j in range(len(b)):
            exact = integrate_pair(mixture_params(a, i), mixture_params(b, j), n, "sqrt")
            assert sim[i, j].item() == pytest.approx(exact, rel=1e-6)


# ------------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("name", list(SIMS))
@pytest.mark.parametrize("n", [1, 16, 512, 4096])
def test_self_similarity_symmetry_range(name: str, n: int) -> None:
    sim_fn = SIMS[name]
    a = random_mixture(6, 5, n, seed=7, mean_scale=0.05, dtype=torch.float32)
    s = sim_fn(a, a)
    assert torch.allclose(s.diagonal(), torch.ones(6), atol=1e-5)
    assert torch.allclose(s, s.T, atol=1e-6)
    assert ((s >= 0) & (s <= 1)).all()
    # a copy that is not the same object takes the non-symmetric path and must agree
    copy = a.to(torch.float32)._map(torch.clone)
    s2 = sim_fn(a, copy)
    assert torch.allclose(s2.diagonal(), torch.ones(6), atol=1e-5)
    assert torch.allclose(s2, s, atol=1e-5)


def test_correlation_float32_accurate_at_large_dim() -> None:
    # docs/math.md s.4: a plain fp32 evaluation of log K loses ~1e-4..1e-3 at n = 4096; the kernel stays near fp64
    for n, var_range in [(4096, (1.0, 1.05)), (4096, (9000.0, 10000.0)), (2048, (1.0, 3.0)), (4096, (1.0, 1e4))]:
        a32 = random_mixture(5, 4, n, seed=8, mean_scale=0.002, var_range=var_range).float()
        ref = dense_correlation(a32.double(), a32.double())
        got = correlation_similarity(a32, a32._map(torch.clone)).double()
        naive = dense_correlation(a32, a32._map(torch.clone)).double()
        assert (got - ref).abs().max().item() < 5e-6
        assert (naive - ref).abs().max().item() > 20 * (got - ref).abs().max().item()
        assert ref.min() < 0.8  # informative values, not only ones


# ------------------------------------------------------------------------------------ blockwise kernel
@pytest.mark.parametrize("block", [1, 3, 4, 7, 64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_blockwise_equals_dense_value_and_gradient(block: int, symmetric: bool) -> None:
    a = random_mixture(7, 4, 6, seed=9, mean_scale=0.4, requires_grad=True)
    b = a if symmetric else random_mixture(5, 4, 6, seed=10, mean_scale=0.4, requires_grad=True)
    upstream = torch.randn(len(a), len(b), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    leaves = [a.weights, a.means, a.variances] + ([] if symmetric else [b.weights, b.means, b.variances])

    got = correlation_similarity(a, b, block_size=block)
    grads = torch.autograd.grad((got * upstream).sum(), leaves)
    ref = dense_correlation(a, b)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), leaves)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def _raw_params(batch: int, comps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(batch, comps, generator=g, dtype=torch.float64) - 1).requires_grad_()
    m = (0.3 * torch.randn(batch, comps, generator=g, dtype=torch.float64)).requires_grad_()
    v = (1 + torch.rand(batch, comps, generator=g, dtype=torch.float64)).requires_grad_()
    return [w, m, v]


def test_gradcheck_kernels_float64() -> None:
    a, b = _raw_params(5, 3, 11), _raw_params(4, 3, 12)
    assert torch.autograd.gradcheck(lambda *t: _CrossLogK.apply(*t, 3, 2, False), (*a, *b))
    assert torch.autograd.gradcheck(lambda *t: _CrossLogK.apply(*t, *t, 3, 2, True), tuple(a))
    assert torch.autograd.gradcheck(lambda *t: _SelfLogK.apply(*t, 3), tuple(a))


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradcheck_correlation_similarity_float64(symmetric: bool) -> None:
    def fn(*params: torch.Tensor) -> torch.Tensor:
        a = GaussianMixture(torch.softmax(params[0], 1), params[1], params[2], 3)
        b = a if symmetric else GaussianMixture(torch.softmax(params[3], 1), params[4], params[5], 3)
        return correlation_similarity(a, b, block_size=2)

    params = _raw_params(5, 3, 13) + ([] if symmetric else _raw_params(3, 3, 14))
    assert torch.autograd.gradcheck(fn, tuple(params))


def test_default_block_size_bounds_the_tile() -> None:
    for comps in [1, 9, 80, 1000]:
        for device, limit in (("cpu", DEFAULT_TILE_ELEMENTS), ("cuda", DEFAULT_TILE_ELEMENTS_CUDA)):
            block = default_block_size(comps, device=device)
            assert block >= 1
            assert block == 1 or (block**2 * comps**2 <= limit < (block + 1) ** 2 * comps**2)


# ------------------------------------------------------------------------------------ extremes and precision
@pytest.mark.parametrize("name", list(SIMS))
@pytest.mark.parametrize("n", [1, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_no_nan_for_extreme_inputs(name: str, n: int, dtype: torch.dtype) -> None:
    batch = 6
    params, a = extreme_mixture(batch, 4, n, dtype, seed=15)
    g = torch.Generator().manual_seed(16)
    s = SIMS[name](a, a)
    assert s.dtype == torch.float32
    assert torch.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    grads = torch.autograd.grad((s * torch.randn(batch, batch, generator=g)).sum(), params)
    assert all(torch.isfinite(x).all() for x in grads)


def test_kernel_never_holds_more_than_one_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    import probmcl_med.core.similarities as sims

    tiles: list[tuple[int, ...]] = []
    original = sims._tile_logits

    def recording(*args: torch.Tensor | int) -> torch.Tensor:
        out = original(*args)  # type: ignore[arg-type]
        if out.ndim == 4:  # pairs of samples x pairs of components (the (B, C, C) self terms are 3-d)
            tiles.append(tuple(out.shape))
        return out

    monkeypatch.setattr(sims, "_tile_logits", recording)
    # 23 rows in blocks of 5 -> 5 row blocks; 19 columns -> 4 column blocks
    for symmetric, expected_tiles in ((False, 2 * 5 * 4), (True, 2 * (5 * 6 // 2))):
        tiles.clear()
        a = random_mixture(23, 6, 8, seed=17, requires_grad=True)
        b = a if symmetric else random_mixture(19, 6, 8, seed=18)
        correlation_similarity(a, b, block_size=5).sum().backward()
        assert len(tiles) == expected_tiles  # forward and backward; the symmetric path: upper triangle only
        assert max(t[0] * t[1] * t[2] * t[3] for t in tiles) <= 5 * 5 * 6 * 6


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 3e-7), (torch.float64, 1e-15)])
def test_fast_log1p_is_accurate_to_a_few_ulp(dtype: torch.dtype, tol: float) -> None:
    from probmcl_med.core.similarities import _log1p_into

    q = torch.cat([torch.logspace(-30, 6, 20001, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)])
    qd = q.to(dtype)
    exact = torch.log1p(qd.double()).numpy()
    got = _log1p_into(qd.clone(), torch.empty_like(qd), torch.empty_like(qd)).double().numpy()
    rel = abs(got - exact) / np.maximum(abs(exact), 1e-300)
    rel[exact == 0] = abs(got[exact == 0])
    assert rel.max() <= tol
