"""GaussianMixture container and the mixture density network."""

from __future__ import annotations

import math

import pytest
import torch

from probmcl_med import GaussianMixture as ExportedMixture
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.core.mixture import GaussianMixture

torch.set_num_threads(1)


def make(batch: int = 5, comps: int = 3, dim: int = 8) -> GaussianMixture:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, comps, generator=g)
    return GaussianMixture(
        torch.softmax(logits, 1),
        torch.randn(batch, comps, generator=g),
        1 + torch.rand(batch, comps, generator=g),
        dim,
        torch.log_softmax(logits, 1),
    )


def test_package_exports_the_class() -> None:
    assert ExportedMixture is GaussianMixture


def test_len_and_components() -> None:
    m = make()
    assert len(m) == 5 and m.num_components == 3 and m.dim == 8


@pytest.mark.parametrize(
    "index, rows",
    [
        (2, [2]),
        (-1, [4]),
        (-2, [3]),
        (slice(1, 4), [1, 2, 3]),
        (torch.tensor([True, False, True, False, True]), [0, 2, 4]),
        (torch.tensor([4, 0, 0]), [4, 0, 0]),
        ([3, 1], [3, 1]),
    ],
)
def test_getitem(index: object, rows: list[int]) -> None:
    m = make()
    sub = m[index]
    assert isinstance(sub, GaussianMixture) and sub.dim == m.dim
    for name in ("weights", "means", "variances", "logw"):
        assert torch.equal(getattr(sub, name), getattr(m, name)[rows])


def test_cat_and_mismatch() -> None:
    m = make()
    joined = GaussianMixture.cat([m[0:2], m[2:]])
    for name in ("weights", "means", "variances", "logw"):
        assert torch.equal(getattr(joined, name), getattr(m, name))
    with pytest.raises(ValueError, match="dims"):
        GaussianMixture.cat([m, make(dim=9)])
    with pytest.raises(ValueError):
        GaussianMixture.cat([])


def test_to_float_double_detach() -> None:
    m = make()
    assert m.double().weights.dtype == torch.float64 and m.double().logw.dtype == torch.float64
    assert m.to(torch.bfloat16).float().means.dtype == torch.float32
    assert m.to(torch.float16).upcast().dtype == torch.float32
    assert m.double().upcast().dtype == torch.float64
    leaf = m.means.clone().requires_grad_()
    assert not GaussianMixture(m.weights, leaf, m.variances, 8).detach().means.requires_grad


def test_log_weights() -> None:
    m = make()
    assert torch.equal(m.log_weights, m.logw)
    plain = GaussianMixture(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), torch.ones(1, 2), 2)
    lw = plain.log_weights
    assert lw[0, 0] == 0 and torch.isfinite(lw).all() and lw[0, 1] < -80


def test_validate() -> None:
    m = make()
    assert m.validate() is m
    with pytest.raises(ValueError, match="shape"):
        GaussianMixture(m.weights, m.means[:, :2], m.variances, 8).validate()
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(m.weights * 2, m.means, m.variances, 8).validate()
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(m.weights, m.means, -m.variances, 8).validate()
    with pytest.raises(ValueError, match="dim"):
        GaussianMixture(m.weights, m.means, m.variances, 0).validate()
    with pytest.raises(ValueError, match="non-finite"):
        GaussianMixture(m.weights, m.means * math.inf, m.variances, 8).validate()


# ---------------------------------------------------------------------------------------------------- MDN
def test_mdn_shapes_and_constraints() -> None:
    torch.manual_seed(0)
    mdn = MixtureDensityNetwork(16, 5, hidden=(32, 8))
    h = torch.nn.functional.normalize(torch.randn(7, 16), dim=1)
    m = mdn(h)
    assert isinstance(m, GaussianMixture)
    assert m.weights.shape == m.means.shape == m.variances.shape == (7, 5)
    assert m.dim == 16
    assert torch.allclose(m.weights.sum(1), torch.ones(7), atol=1e-6)
    assert (m.variances >= 1).all()
    m.validate()
    assert MixtureDensityNetwork(16, 5, latent_dim=3, hidden=(8,))(h).dim == 3


def test_mdn_paper_architecture_and_init() -> None:
    mdn = MixtureDensityNetwork(64, 4)
    linears = [layer for layer in mdn.modules() if isinstance(layer, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64, 2048), (2048, 128), (128, 12)]
    w = mdn.out.weight
    bound = 1 / math.sqrt(128)
    assert w[:8].abs().max() <= bound and w[:8].std() > 0.3 * bound  # uniform rows for pi and mu
    assert torch.all(w[8:] == 1 / 128) and torch.all(mdn.out.bias == 0)
    literal = MixtureDensityNetwork(64, 4, var_weight_init=1.0)
    assert torch.all(literal.out.weight[8:] == 1.0)


def test_mdn_variance_floor_for_extreme_inputs() -> None:
    torch.manual_seed(1)
    mdn = MixtureDensityNetwork(8, 3, hidden=(16, 8), var_weight_init=-5.0)
    m = mdn(torch.randn(4, 8) * 1e3)
    assert (m.variances >= 1).all() and torch.isfinite(m.variances).all()
    assert torch.isfinite(m.log_weights).all()


def test_mdn_runs_in_float32_under_autocast() -> None:
    torch.manual_seed(2)
    mdn = MixtureDensityNetwork(16, 3, hidden=(32, 8))
    h = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m = mdn(h.to(torch.bfloat16))
        inner = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert inner.dtype == torch.bfloat16  # autocast was active around the call
    for t in (m.weights, m.means, m.variances, m.log_weights):
        assert t.dtype == torch.float32
    ref = mdn(h.to(torch.bfloat16).float())
    assert torch.allclose(m.means, ref.means) and torch.allclose(m.variances, ref.variances)


def test_mdn_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="expects"):
        MixtureDensityNetwork(16, 3, hidden=(8,))(torch.randn(2, 15))


def test_mdn_batch_input_norm_standardises_each_feature_then_keeps_running_statistics() -> None:
    torch.manual_seed(3)
    # unit-norm features that share a large common direction, as a ReLU encoder's do
    common = torch.ones(16) / 4.0
    h = torch.nn.functional.normalize(common + 0.05 * torch.randn(64, 16), dim=1)
    plain = MixtureDensityNetwork(16, 4, hidden=(32, 8))
    torch.manual_seed(3)
    standardised = MixtureDensityNetwork(16, 4, hidden=(32, 8), input_norm="batch")
    assert standardised.spec["input_norm"] == "batch" and plain.spec["input_norm"] == "none"
    first = standardised.hidden[0]
    assert isinstance(first, torch.nn.BatchNorm1d) and first.weight is None  # no affine parameters
    z = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + first.eps)
    torch.testing.assert_close(standardised.hidden[:2](h), standardised.hidden[1](z))  # the closed form
    # the mixtures of different images differ far more when the MDN reads standardised features
    assert standardised(h).means.std(0).mean() > 5 * plain(h).means.std(0).mean()
    standardised.eval()  # evaluation uses the running statistics: one image gives the same output alone or in a batch
    torch.testing.assert_close(standardised(h[:1]).means, standardised(h).means[:1])
    with pytest.raises(ValueError, match="input_norm"):
        MixtureDensityNetwork(16, 4, input_norm="layer")
