"""Contrastive loss against a slow explicit loop; objective; asymmetric loss against an elementwise formula."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probmcl_med.core.classification import AsymmetricLoss, classification_loss
from probmcl_med.core.losses import ContrastiveStats, ProbContrastiveLoss, ProbMCLObjective
from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.errors import ConfigError, UserError

sys.path.insert(0, str(Path(__file__).parent))
from mixture_reference import dense_correlation, extreme_mixture

torch.set_num_threads(1)


def make_batch(
    images: int = 5, comps: int = 4, n: int = 6, seed: int = 0, empty: tuple[int, ...] = (1,)
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Raw float64 leaves (logits, means, variances) for 2N views, and labels with the two views of image i at rows
    2i and 2i+1 (paper Section 2.2); images listed in ``empty`` have no label."""
    g = torch.Generator().manual_seed(seed)
    rows = 2 * images
    logits = torch.randn(rows, comps, generator=g, dtype=torch.float64).requires_grad_()
    means = (0.4 * torch.randn(rows, comps, generator=g, dtype=torch.float64)).requires_grad_()
    variances = (1 + torch.rand(rows, comps, generator=g, dtype=torch.float64)).requires_grad_()
    per_image = (torch.rand(images, comps, generator=g) < 0.4).double()
    per_image[0, :2] = 1.0
    for i in empty:
        per_image[i] = 0
    return [logits, means, variances], per_image.repeat_interleave(2, dim=0)


def mixture_of(params: list[torch.Tensor], n: int = 6) -> GaussianMixture:
    return GaussianMixture(torch.softmax(params[0], 1), params[1], params[2], n)


def bhattacharyya_pair(a: GaussianMixture, i: int, b: GaussianMixture, j: int) -> torch.Tensor:
    """Matched lower bound for one pair, written from docs/math.md s.5 with scalar operations."""
    n, total = a.dim, 0.0
    for k in range(a.num_components):
        s, t = a.variances[i, k], b.variances[j, k]
        log_bc = -n * (a.means[i, k] - b.means[j, k]) ** 2 / (4 * (s + t)) - n / 2 * torch.log(
            (s + t) / (2 * torch.sqrt(s * t))
        )
        total = total + torch.sqrt(a.weights[i, k] * b.weights[j, k]) * torch.exp(log_bc)
    return total


def loop_loss(sim: torch.Tensor, labels: torch.Tensor, overlap: str, alpha: float, tau: float) -> torch.Tensor:
    """docs/math.md s.7 with explicit loops over anchors and positives; overlaps from explicit set formulas."""
    rows = labels.shape[0]
    sets = [{c for c in range(labels.shape[1]) if labels[i, c] > 0} for i in range(rows)]

    def d(i: int, j: int) -> float:
        if overlap == "jaccard":
            union = sets[i] | sets[j]
            return len(sets[i] & sets[j]) / len(union) if union else 0.0
        den = math.sqrt(len(sets[i]) * len(sets[j]))
        return len(sets[i] & sets[j]) / den if den else 0.0

    terms = []
    for i in range(rows):
        positives = [j for j in range(rows) if j != i and d(i, j) >= alpha]
        if not positives:
            continue
        log_denominator = torch.logsumexp(torch.stack([sim[i, m] / tau for m in range(rows) if m != i]), 0)
        total = sum(d(i, j) * (sim[i, j] / tau - log_denominator) for j in positives)
        terms.append(-total / len(positives))
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=sim.dtype)


def explicit_sim(name: str, m: GaussianMixture) -> torch.Tensor:
    if name == "correlation":
        return dense_correlation(m, m)
    rows = len(m)
    return torch.stack([torch.stack([bhattacharyya_pair(m, i, m, j) for j in range(rows)]) for i in range(rows)])


@pytest.mark.parametrize("similarity", ["correlation", "bhattacharyya"])
@pytest.mark.parametrize("overlap", ["jaccard", "cosine"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_contrastive_matches_explicit_loop(similarity: str, overlap: str, alpha: float) -> None:
    params, labels = make_batch(empty=(1, 3))
    loss_fn = ProbContrastiveLoss(similarity, overlap, alpha=alpha, tau=0.2)
    got = loss_fn(mixture_of(params), labels)
    got_grads = torch.autograd.grad(got, params)
    expected = loop_loss(explicit_sim(similarity, mixture_of(params)), labels, overlap, alpha, 0.2)
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    for g, e in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-7, atol=1e-10)


def test_anchors_without_positive_are_excluded_and_counted() -> None:
    params, labels = make_batch(images=4, empty=(1, 2))
    loss_fn = ProbContrastiveLoss(alpha=0.5)
    loss, stats = loss_fn.forward_with_stats(mixture_of(params), labels)
    # images 1 and 2 have no label: their 4 views have D = 0 with everything and no positive
    assert (stats.valid_anchors, stats.anchors, stats.global_valid_anchors) == (4, 8, 4)
    assert loss_fn.last_stats == stats
    expected = loop_loss(dense_correlation(mixture_of(params), mixture_of(params)), labels, "jaccard", 0.5, 0.2)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


def test_alpha_zero_makes_every_other_view_a_positive() -> None:
    params, labels = make_batch(images=3, empty=(1,))
    _, stats = ProbContrastiveLoss(alpha=0.0).forward_with_stats(mixture_of(params), labels)
    assert stats.valid_anchors == 6  # D >= 0 always: even the unlabelled views have (zero-weight) positives


@pytest.mark.parametrize("similarity", ["correlation", "bhattacharyya"])
def test_all_label_sets_empty_gives_zero_that_backpropagates(similarity: str) -> None:
    params, labels = make_batch()
    loss, stats = ProbContrastiveLoss(similarity, alpha=0.5).forward_with_stats(mixture_of(params), labels * 0)
    assert loss.item() == 0.0 and stats.valid_anchors == 0
    loss.backward()
    for p in params:
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p.grad))


def test_callables_and_unknown_names() -> None:
    params, labels = make_batch()

    def my_overlap(ya: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return torch.ones(ya.shape[0], yb.shape[0], dtype=torch.float64)

    loss = ProbContrastiveLoss(similarity=dense_correlation, overlap=my_overlap, alpha=0.5)(mixture_of(params), labels)
    expected = ProbContrastiveLoss(alpha=0.0)  # every pair positive with weight 1 <-> jaccard with all-ones labels
    assert loss.item() == pytest.approx(expected(mixture_of(params), torch.ones_like(labels)).item(), rel=1e-10)
    with pytest.raises(ConfigError, match="did you mean 'correlation'"):
        ProbContrastiveLoss(similarity="corelation")
    with pytest.raises(UserError, match="alpha"):
        ProbContrastiveLoss(alpha=1.5)
    with pytest.raises(UserError, match="tau"):
        ProbContrastiveLoss(tau=0.0)


@pytest.mark.parametrize("similarity", ["correlation", "bhattacharyya"])
@pytest.mark.parametrize("n", [1, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_contrastive_no_nan_for_extreme_inputs(similarity: str, n: int, dtype: torch.dtype) -> None:
    rows, comps = 8, 4
    params, m = extreme_mixture(rows, comps, n, dtype, seed=3)
    g = torch.Generator().manual_seed(4)
    labels = (torch.rand(rows // 2, comps, generator=g) < 0.5).float().repeat_interleave(2, 0)
    labels[0:2] = torch.tensor([1.0, 0, 0, 0])
    loss = ProbContrastiveLoss(similarity, alpha=0.3)(m, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for gr in torch.autograd.grad(loss, params):
        assert torch.isfinite(gr).all()


# ---------------------------------------------------------------------------------------------------- objective
@pytest.mark.parametrize("likelihood", ["density", "responsibility"])
def test_objective_is_nll_plus_lambda_pcl(likelihood: str) -> None:
    params, labels = make_batch()
    z = torch.randn(10, 6, dtype=torch.float64)
    objective = ProbMCLObjective(lam=0.3, likelihood=likelihood, contrastive=ProbContrastiveLoss(alpha=0.5))
    out = objective(mixture_of(params), z, labels)
    from probmcl_med.registry import LIKELIHOODS

    nll = LIKELIHOODS.get(likelihood)(mixture_of(params), z, labels)
    pcl = ProbContrastiveLoss(alpha=0.5)(mixture_of(params), labels)
    assert out.nll.item() == pytest.approx(nll.item(), rel=1e-12)
    assert out.pcl.item() == pytest.approx(pcl.item(), rel=1e-12)
    assert out.total.item() == pytest.approx(nll.item() + 0.3 * pcl.item(), rel=1e-12)
    assert (out.valid_anchors, out.anchors) == (8, 10)
    out.total.backward()
    assert all(torch.isfinite(p.grad).all() for p in params)
    with pytest.raises(ConfigError, match="likelihood"):
        ProbMCLObjective(likelihood="densty")


def test_objective_weights_its_terms_and_refuses_an_empty_objective() -> None:
    params, labels = make_batch()
    z = torch.randn(10, 6, dtype=torch.float64)
    full = ProbMCLObjective(lam=0.3, likelihood="density")(mixture_of(params), z, labels)
    pcl_only = ProbMCLObjective(lam=0.3, likelihood="density", nll_weight=0.0)(mixture_of(params), z, labels)
    half = ProbMCLObjective(lam=0.0, likelihood="density", nll_weight=0.5)(mixture_of(params), z, labels)
    assert pcl_only.total.item() == pytest.approx(0.3 * full.pcl.item(), rel=1e-12)
    assert half.total.item() == pytest.approx(0.5 * full.nll.item(), rel=1e-12)
    with pytest.raises(ConfigError, match="nll_weight"):
        ProbMCLObjective(lam=0.0, nll_weight=0.0)


# ---------------------------------------------------------------------------------------------------- ASL
def asl_reference(x: np.ndarray, y: np.ndarray, gneg: float, gpos: float, clip: float, eps: float) -> np.ndarray:
    """Elementwise ASL (Ridnik et al. 2021, published code's semantics), plain numpy float64.

    One deliberate difference from the published code (docs/math.md s.9): log p and, without clipping, log(1 - p)
    are exact (-log1p(exp(-x)), -log1p(exp(x))) instead of floored at eps, so a confidently wrong logit keeps its
    loss and gradient. With clipping, p_neg >= clip > eps and the floor never binds.
    """
    out = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xx = float(x[idx])
        p = 1.0 / (1.0 + math.exp(-xx))
        p_neg = min(1.0 - p + clip, 1.0) if clip > 0 else 1.0 - p
        log_pos = -math.log1p(math.exp(-xx))
        log_neg = math.log(max(p_neg, eps)) if clip > 0 else -math.log1p(math.exp(xx))
        yy = y[idx]
        log_term = yy * log_pos + (1 - yy) * log_neg
        pt = p * yy + p_neg * (1 - yy)
        weight = (1 - pt) ** (gpos * yy + gneg * (1 - yy))
        out[idx] = -log_term * weight
    return out


def asl_gradient_reference(x: np.ndarray, y: np.ndarray, gneg: float, clip: float) -> np.ndarray:
    """d loss / d x with the focusing weight held constant (gamma_pos = 0, binary y, moderate x)."""
    p = 1 / (1 + np.exp(-x))
    p_neg = np.minimum(1 - p + clip, 1.0)
    weight_neg = (1 - p_neg) ** gneg
    grad_neg = np.where(1 - p + clip < 1, p * (1 - p) / p_neg * weight_neg, 0.0)
    return y * -(1 - p) + (1 - y) * grad_neg


@pytest.mark.parametrize("gneg, gpos, clip", [(4, 0, 0.05), (2, 1, 0.0), (0, 0, 0.1), (1, 3, 0.2)])
def test_asl_matches_elementwise_formula(gneg: float, gpos: float, clip: float) -> None:
    g = torch.Generator().manual_seed(4)
    x = 4 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[0, 0], x[0, 1] = 40.0, -40.0  # saturated probabilities hit eps and the clip
    y = (torch.rand(6, 5, generator=g) < 0.4).double()
    y[1, 2] = 0.3  # soft target
    ref = asl_reference(x.numpy(), y.numpy(), gneg, gpos, clip, 1e-8)
    loss_fn = AsymmetricLoss(gneg, gpos, clip, 1e-8, reduction="none")
    np.testing.assert_allclose(loss_fn(x, y).numpy(), ref, rtol=1e-10, atol=1e-12)
    assert AsymmetricLoss(gneg, gpos, clip, reduction="sum")(x, y).item() == pytest.approx(ref.sum(), rel=1e-10)
    assert AsymmetricLoss(gneg, gpos, clip, reduction="mean")(x, y).item() == pytest.approx(ref.mean(), rel=1e-10)


def test_asl_focusing_weight_carries_no_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(4, 6, generator=g) < 0.5).double()
    AsymmetricLoss(4, 0, 0.05, reduction="sum")(x, y).backward()
    expected = asl_gradient_reference(x.detach().numpy(), y.numpy(), 4, 0.05)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_asl_without_focusing_is_binary_cross_entropy() -> None:
    x, y = torch.randn(5, 7, dtype=torch.float64), (torch.rand(5, 7) < 0.5).double()
    ours = AsymmetricLoss(0, 0, 0.0, reduction="sum")(x, y)
    assert ours.item() == pytest.approx(F.binary_cross_entropy_with_logits(x, y, reduction="sum").item(), rel=1e-9)


def _logits_with_extremes(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(8, 6, generator=g, dtype=torch.float64)
    x[0, :3] = torch.tensor([60.0, -60.0, 25.0])  # confidently right and confidently wrong
    y = (torch.rand(8, 6, generator=g) < 0.4).double()
    y[0, :3] = torch.tensor([0.0, 1.0, 1.0])
    y[1, 1] = 0.25  # soft target
    return x.requires_grad_(True), y


def test_bce_by_name_is_torch_bce_with_logits_in_value_and_gradient() -> None:
    x, y = _logits_with_extremes(11)
    ours = classification_loss("bce")(x, y)
    ours.backward()
    ours_grad = x.grad.clone()
    x.grad = None
    reference = F.binary_cross_entropy_with_logits(x, y)
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-12)
    torch.testing.assert_close(ours_grad, x.grad, rtol=1e-10, atol=1e-14)
    assert x.grad[0, 1] != 0  # a confidently wrong positive still has a gradient (no eps floor)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.5])
def test_focal_by_name_is_torchvisions_sigmoid_focal_loss_in_value_and_gradient(gamma: float) -> None:
    from torchvision.ops import sigmoid_focal_loss

    x, y = _logits_with_extremes(12)
    y = y.round()  # torchvision's formula is for hard targets
    ours = classification_loss("focal", focal_gamma=gamma)(x, y)
    ours.backward()
    ours_grad = x.grad.clone()
    x.grad = None
    reference = sigmoid_focal_loss(x, y, alpha=-1, gamma=gamma, reduction="mean")
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-9)
    torch.testing.assert_close(ours_grad, x.grad, rtol=1e-7, atol=1e-12)


def test_asl_by_name_keeps_the_published_values_and_options() -> None:
    loss = classification_loss("asl")
    assert (loss.gamma_neg, loss.gamma_pos, loss.clip, loss.detach_weight) == (4.0, 0.0, 0.05, True)
    custom = classification_loss("asl", gamma_neg=2, gamma_pos=1, clip=0.1, focal_gamma=7)
    assert (custom.gamma_neg, custom.gamma_pos, custom.clip) == (2.0, 1.0, 0.1)
    with pytest.raises(ConfigError, match=r"classifier\.loss 'cross'"):
        classification_loss("cross")


def test_asl_keeps_the_callers_grad_mode() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = (torch.rand(3, 4) < 0.5).float()
    loss_fn = AsymmetricLoss()
    with torch.no_grad():
        inside = loss_fn(x, y)
        assert not torch.is_grad_enabled()
        assert not inside.requires_grad
        again = loss_fn(x, y)
        assert not torch.is_grad_enabled() and not again.requires_grad
    assert torch.is_grad_enabled()
    out = loss_fn(x, y)
    assert out.requires_grad
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_asl_half_inputs_and_reductions() -> None:
    x = torch.tensor([[100.0, -100.0, 0.0], [-30.0, 30.0, 2.0]], dtype=torch.float16, requires_grad=True)
    y = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = AsymmetricLoss()(x, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    none = AsymmetricLoss(reduction="none")(x.detach(), y)
    assert none.shape == (2, 3)
    assert AsymmetricLoss(reduction="sum")(x.detach(), y).item() == pytest.approx(6 * loss.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="reduction"):
        AsymmetricLoss(reduction="avg")
    with pytest.raises(ConfigError, match="clip"):
        AsymmetricLoss(clip=1.5)


# ---------------------------------------------------------------------------------------------------- several processes
DIST_CONFIGS = [("correlation", "jaccard", 0.5), ("bhattacharyya", "cosine", 0.3)]


def _dist_worker(rank: int, world: int, init_file: str, data_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    data = torch.load(data_file)
    start, stop = data["bounds"][rank], data["bounds"][rank + 1]
    results = []
    for similarity, overlap, alpha in DIST_CONFIGS:
        local = [t[start:stop].clone().requires_grad_() for t in data["params"]]
        loss_fn = ProbContrastiveLoss(similarity, overlap, alpha=alpha, gather=True)
        loss, stats = loss_fn.forward_with_stats(mixture_of(local), data["labels"][start:stop])
        loss.backward()
        results.append({"loss": loss.detach(), "grads": [t.grad for t in local], "stats": dataclasses.astuple(stats)})
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_loss_equals_single_process_loss(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    params, labels = make_batch(images=4, empty=(2,))
    world, bounds = 2, [0, 5, 8]  # uneven split; the two views of image 2 land on different ranks
    torch.save({"params": [p.detach() for p in params], "labels": labels, "bounds": bounds}, tmp_path / "data.pt")
    mp.spawn(_dist_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "data.pt"), str(tmp_path)), nprocs=world)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for c, (similarity, overlap, alpha) in enumerate(DIST_CONFIGS):
        single_fn = ProbContrastiveLoss(similarity, overlap, alpha=alpha)
        single = single_fn(mixture_of(params), labels)
        single_grads = torch.autograd.grad(single, params)
        losses = [per_rank[r][c]["loss"] for r in range(world)]
        # documented contract: the mean over ranks is the single-process loss ...
        assert (sum(losses) / world).item() == pytest.approx(single.item(), rel=1e-10)
        # ... and DDP's average of the ranks' gradients (here: of their local rows) is its gradient
        for k in range(3):
            gathered = torch.cat([per_rank[r][c]["grads"][k] for r in range(world)]) / world
            torch.testing.assert_close(gathered, single_grads[k], rtol=1e-8, atol=1e-11)
        stats = [ContrastiveStats(*per_rank[r][c]["stats"]) for r in range(world)]
        assert sum(s.valid_anchors for s in stats) == single_fn.last_stats.valid_anchors
        assert [s.anchors for s in stats] == [5, 3]
        assert all(s.global_valid_anchors == single_fn.last_stats.valid_anchors for s in stats)
