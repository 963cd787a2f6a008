"""Losses of ProbMCL's contrastive stage: the probabilistic contrastive loss (Eq. 3) and the stage-1 objective
(Eq. 4), each made exact in docs/math.md sections 7-8. The classifier's losses (ASL, focal, BCE) are in
:mod:`probmcl_med.core.classification`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

import probmcl_med.core.overlaps
import probmcl_med.core.similarities  # noqa: F401 (they register the built-in names this module looks up)
from probmcl_med.core.classification import CLASSIFICATION_LOSSES
from probmcl_med.core.likelihoods import graph_zero
from probmcl_med.core.mixture import GaussianMixture, compute_dtype
from probmcl_med.errors import ConfigError
from probmcl_med.registry import LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry, RegistryError

LOSS_TERMS = ("loss", *CLASSIFICATION_LOSSES, "nll", "pcl")
"""The names a training step logs its loss under: the total, the classifier loss by its name, the objective's two
terms (console, ``metrics.jsonl``, TensorBoard)."""

SimilarityFn = Callable[[GaussianMixture, GaussianMixture], Tensor]
OverlapFn = Callable[[Tensor, Tensor], Tensor]

SIMILARITY_FORMS = ("value", "log")
"""What the loss divides by ``tau`` (docs/math.md s.7b): the similarity itself (the paper, in [0, 1]) or its log
(in (-inf, 0]; exact in the log domain for the built-in similarities, which expose it as ``fn.log_form``)."""


def similarity_in_form(fn: SimilarityFn, form: str) -> SimilarityFn:
    """``fn`` itself (``value``) or its log form: ``fn.log_form`` when the similarity has one (exact), else
    ``log(max(fn, tiny))`` (a plugin without one; its zeros become ``log(tiny)``, about -87 in float32)."""
    if form not in SIMILARITY_FORMS:
        raise ConfigError(f"contrastive similarity_form must be one of {', '.join(SIMILARITY_FORMS)}, got {form!r}")
    if form == "value":
        return fn
    exact = getattr(fn, "log_form", None)
    if exact is not None:
        return exact

    def logged(a: GaussianMixture, b: GaussianMixture) -> Tensor:
        value = fn(a, b)
        return value.clamp_min(torch.finfo(value.dtype).tiny).log()

    logged.__name__ = f"log_{getattr(fn, '__name__', 'similarity')}"
    return logged


def _resolve(registry: Registry, value: str | Callable[..., Any], key: str) -> Callable[..., Any]:
    """A registered name or a callable; an unknown name raises :class:`ConfigError` naming ``key``."""
    if callable(value):
        return value
    try:
        return registry.get(value)
    except RegistryError as err:
        raise ConfigError(f"{key}: {err}") from None


# ---------------------------------------------------------------------------------------------------- contrastive
def contrastive_anchor_losses(
    sim: Tensor, overlap: Tensor, self_index: Tensor, alpha: float, tau: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Per-anchor terms ``l_i`` of Eq. 3 as fixed in docs/math.md section 7.

    ``l_i = -(1/|A(i)|) sum_{j in A(i)} D_ij (S_ij / tau - logsumexp_{l != i} S_il / tau)``,
    ``A(i) = {j != i : D_ij >= alpha}``. ``D`` multiplies the log term (KMCL puts it inside the log, where it only
    adds a constant); the anchor itself is excluded by masking its column to ``-inf`` inside the log-sum-exp.

    Args:
        sim: ``(b, G)`` similarities of ``b`` anchors against ``G`` candidates (the anchors among them).
        overlap: ``(b, G)`` label overlaps ``D``.
        self_index: ``(b,)`` column of each anchor itself.
        alpha: overlap threshold for positives; tau: temperature (a float, or a 0-d tensor when it is learned).

    Returns:
        ``(l, valid)``: ``(b,)`` losses (0 for anchors without positives) and the ``(b,)`` mask ``|A(i)| > 0``.
    """
    b = sim.shape[0]
    is_self = torch.zeros_like(sim, dtype=torch.bool)
    is_self[torch.arange(b, device=sim.device), self_index] = True
    logits = (sim / tau).masked_fill(is_self, -math.inf)
    log_prob = (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(is_self, 0.0)
    positive = (overlap >= alpha) & ~is_self
    count = positive.sum(dim=1)
    weighted = torch.where(positive, overlap.to(log_prob.dtype) * log_prob, torch.zeros_like(log_prob))
    losses = -weighted.sum(dim=1) / count.clamp_min(1).to(log_prob.dtype)
    valid = count > 0
    return torch.where(valid, losses, torch.zeros_like(losses)), valid


def _batch_sizes(local_size: int, device: torch.device) -> list[int]:
    """Every rank's first dimension (all-gathered)."""
    size = torch.tensor([local_size], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of ``(b_r, F)`` tensors (``counts`` = every rank's ``b_r``, uneven allowed) whose backward gives
    each rank its rows of the SUM over ranks of the gradients (an all-reduce): the gradient of the sum of all ranks'
    losses. (Written out rather than ``torch.distributed.nn.all_gather`` so that it needs only ``all_gather`` and
    ``all_reduce``, which every backend has, and handles uneven batches.)"""

    @staticmethod
    def forward(ctx: Any, local: Tensor, counts: list[int]) -> Tensor:
        padded = local.new_zeros((max(counts), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(counts[:rank]), sum(counts[: rank + 1])
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop], None


def _distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_likelihood_inputs(
    mixtures: GaussianMixture, z: Tensor, labels: Tensor
) -> tuple[GaussianMixture, Tensor, Tensor]:
    """Every rank's mixtures and points (gathered with gradients) and labels (without): the global batch."""
    local = mixtures.upcast()
    z = z.to(local.weights.dtype)
    packed = torch.cat([*_packed(local), z], dim=1)
    counts = _batch_sizes(len(local), packed.device)
    gathered = _GatherWithGrad.apply(packed, counts)
    everyone = _unpacked(gathered[:, : -z.shape[1]], local)
    with torch.no_grad():
        labels_all = _GatherWithGrad.apply(labels.to(device=packed.device, dtype=compute_dtype(labels)), counts)
    return everyone, gathered[:, -z.shape[1] :], labels_all


def _packed(m: GaussianMixture) -> list[Tensor]:
    """``[log pi (B, C), means (B, C d), variances (B, C)]``: a mixture's parameters as rows for a gather."""
    return [m.log_weights, m.means.reshape(len(m), -1), m.variances]


def _unpacked(rows: Tensor, like: GaussianMixture) -> GaussianMixture:
    """The mixtures of gathered :func:`_packed` rows, shaped like ``like`` (dimension, mean shape, directions)."""
    c, d = like.num_components, like.mean_dim
    logw, means, variances = rows.split([c, c * d, c], dim=1)
    means = means.reshape(-1, *like.means.shape[1:])
    return GaussianMixture(logw.exp(), means, variances, like.dim, logw, like.directions)


@dataclass(frozen=True)
class ContrastiveStats:
    """Counts reported with the contrastive loss.

    Attributes:
        valid_anchors: anchors of this process with at least one positive (``|A(i)| > 0``).
        anchors: anchors of this process.
        global_valid_anchors: valid anchors over all processes (equals ``valid_anchors`` without gathering).
    """

    valid_anchors: int
    anchors: int
    global_valid_anchors: int


class ProbContrastiveLoss(nn.Module):
    """Probabilistic multi-label contrastive loss ``L_PCL``: paper Eq. 3 as made exact in docs/math.md section 7.

    ``L_PCL`` is the MEAN of ``l_i`` over the valid anchors (those with ``|A(i)| > 0``); anchors without positives
    are left out and counted (:attr:`last_stats`, or :meth:`forward_with_stats`). A batch with no valid anchor gives
    a 0 that still backpropagates (zero gradients, never NaN). Deviations from the paper's letter: the paper sums
    over anchors (a mean keeps ``lambda`` comparable across batch sizes); ``D`` multiplies the log term; the cosine
    overlap is the real cosine (see :mod:`probmcl_med.core.overlaps`). With ``alpha = 0`` every other view is in ``A(i)``,
    including those with ``D = 0`` (weight 0), exactly as the formula reads.

    Several processes (docs/math.md section 8, ``gather=True`` under an initialised ``torch.distributed``): every
    rank all-gathers ``(log pi, mu, var)`` with a gather whose backward all-reduces the gradients, and the labels
    without gradient; it contrasts its LOCAL anchors against the GLOBAL batch (``b x G`` similarities, not
    ``G x G``) and divides by the GLOBAL number of valid anchors (an all-reduce). The value returned on each rank is
    ``world_size * (sum of its local l_i) / (global valid anchors)``, so that:

    * the MEAN of the returned values over ranks equals the single-process loss on the concatenated batch (log
      ``all_reduce(loss) / world_size``);
    * DDP's gradient averaging (divide by ``world_size``) yields exactly the gradient of that single-process loss.

    Every rank must call backward (DDP does), because the gather's backward is a collective. Without an initialised
    process group ``gather=True`` is the single-process loss.

    Args:
        similarity: a name in ``SIMILARITIES`` or a callable ``(a, b) -> (len(a), len(b))`` in [0, 1].
        overlap: a name in ``OVERLAPS`` or a callable ``(ya, yb) -> (B, M)`` in [0, 1].
        alpha: overlap threshold ``alpha`` in [0, 1] (paper: 0.6 MS-COCO, 0.5 ADP).
        tau: temperature > 0 (paper: 0.2).
        gather: contrast against the batch of all processes (see above).
        form: ``value`` (the paper: ``Sim / tau``) or ``log`` (``log Sim / tau``, docs/math.md s.7b).
        temperature: a learned :class:`~probmcl_med.core.logit_scale.LogitScale` (``1 / tau``, docs/math.md s.7c)
            that replaces ``tau``; it is a parameter of the network that owns it (the MDN), not of this loss.
    """

    def __init__(
        self,
        similarity: str | SimilarityFn = "correlation",
        overlap: str | OverlapFn = "jaccard",
        alpha: float = 0.5,
        tau: float = 0.2,
        gather: bool = False,
        form: str = "value",
        temperature: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"contrastive alpha must be in [0, 1], got {alpha}: set the overlap threshold in [0, 1]")
        if not float(tau) > 0.0:
            raise ConfigError(f"contrastive tau must be > 0, got {tau}: set a positive temperature (paper: 0.2)")
        self.similarity: SimilarityFn = _resolve(SIMILARITIES, similarity, "similarity")
        self.overlap: OverlapFn = _resolve(OVERLAPS, overlap, "overlap")
        self.alpha, self.tau, self.gather = float(alpha), float(tau), bool(gather)
        self.form = form
        self.contrast: SimilarityFn = similarity_in_form(self.similarity, form)
        self.__dict__["temperature"] = temperature  # not a submodule: its owner saves and optimises it
        self.last_stats: ContrastiveStats | None = None

    def current_tau(self) -> float | Tensor:
        """The temperature the loss divides by: ``tau``, or ``1 / s`` of the learned logit scale (a 0-d tensor)."""
        temperature = self.__dict__["temperature"]
        return self.tau if temperature is None else 1.0 / temperature()

    def extra_repr(self) -> str:
        name = getattr(self.similarity, "__name__", "?"), getattr(self.overlap, "__name__", "?")
        learned = ", tau learned" if self.__dict__["temperature"] is not None else ""
        return (
            f"similarity={name[0]}, form={self.form}, overlap={name[1]}, alpha={self.alpha}, tau={self.tau}{learned}, "
            f"gather={self.gather}"
        )

    def forward(self, mixtures: GaussianMixture, labels: Tensor) -> Tensor:
        """``L_PCL`` for a batch of ``2N`` views (``(2N,)`` mixtures, ``(2N, C)`` labels); see the class docstring."""
        return self.forward_with_stats(mixtures, labels)[0]

    def forward_with_stats(self, mixtures: GaussianMixture, labels: Tensor) -> tuple[Tensor, ContrastiveStats]:
        """``(loss, stats)``; also stores ``stats`` in :attr:`last_stats`."""
        if labels.ndim != 2 or labels.shape[0] != len(mixtures):
            raise ValueError(f"labels must be (B, C) with B = {len(mixtures)}, got {tuple(labels.shape)}")
        if self.gather and _distributed():
            loss, stats = self._gathered(mixtures, labels)
        else:
            loss, stats = self._local(mixtures, labels)
        self.last_stats = stats
        return loss, stats

    def _local(self, mixtures: GaussianMixture, labels: Tensor) -> tuple[Tensor, ContrastiveStats]:
        sim = self.contrast(mixtures, mixtures)
        overlap = self.overlap(labels, labels).to(sim.device)
        index = torch.arange(len(mixtures), device=sim.device)
        losses, valid = contrastive_anchor_losses(sim, overlap, index, self.alpha, self.current_tau())
        n_valid = int(valid.sum())
        stats = ContrastiveStats(n_valid, len(mixtures), n_valid)
        if n_valid == 0:
            return graph_zero(sim), stats
        return losses.sum() / n_valid, stats

    def _gathered(self, mixtures: GaussianMixture, labels: Tensor) -> tuple[Tensor, ContrastiveStats]:
        world, rank = dist.get_world_size(), dist.get_rank()
        local = mixtures.upcast()
        packed = torch.cat(_packed(local), dim=1)
        counts = _batch_sizes(len(local), packed.device)
        offset = sum(counts[:rank])
        gathered = _GatherWithGrad.apply(packed, counts)
        everyone = _unpacked(gathered, local)
        labels = labels.to(device=packed.device, dtype=compute_dtype(labels))
        with torch.no_grad():
            all_labels = _GatherWithGrad.apply(labels, counts)

        sim = self.contrast(local, everyone)
        overlap = self.overlap(labels, all_labels).to(sim.device)
        index = torch.arange(len(local), device=sim.device) + offset
        losses, valid = contrastive_anchor_losses(sim, overlap, index, self.alpha, self.current_tau())
        n_valid = torch.tensor([int(valid.sum())], device=packed.device)
        n_global = n_valid.clone()
        dist.all_reduce(n_global, op=dist.ReduceOp.SUM)
        stats = ContrastiveStats(int(n_valid), len(local), int(n_global))
        # the returned value must depend on `gathered` on every rank: its backward is a collective
        anchor_zero = graph_zero(sim, gathered)
        if int(n_global) == 0:
            return anchor_zero, stats
        return losses.sum() * (world / int(n_global)) + anchor_zero, stats


# ---------------------------------------------------------------------------------------------------- objective
@dataclass(frozen=True)
class ObjectiveOutput:
    """The stage-1 loss and its parts (docs/math.md section 7, paper Eq. 4).

    Attributes:
        total: ``nll_weight * nll + lam * pcl``, the tensor to call backward on.
        nll: the likelihood term (mean over the batch).
        pcl: the contrastive term (mean over valid anchors; see :class:`ProbContrastiveLoss` for several processes).
        valid_anchors: anchors with at least one positive (this process).
        anchors: anchors in the batch (this process).
    """

    total: Tensor
    nll: Tensor
    pcl: Tensor
    valid_anchors: int
    anchors: int


class ProbMCLObjective(nn.Module):
    """``L = L_NLL + lambda * L_PCL`` (paper Eq. 4); both terms are means, so ``lambda`` keeps the paper's balance.

    Args:
        lam: ``lambda`` (paper: 0.3).
        likelihood: a name in ``LIKELIHOODS`` (``density``: Eq. 2 literally; ``responsibility``: label-aware) or a
            callable ``(mixture, z, labels) -> scalar``.
        contrastive: the contrastive loss; default ``ProbContrastiveLoss()`` (correlation, Jaccard, alpha 0.5,
            tau 0.2).
        nll_weight: factor on the likelihood term (1: the paper); 0 trains with the contrastive term alone (an
            ablation: which term helps the encoder).

    Under DDP with ``contrastive.gather``: ``nll`` is the likelihood of the gathered global batch, the same value on
    every rank (the gather carries gradients, so DDP's averaged gradient is exactly its gradient; a mean of per-rank
    means would not be the global mean for a likelihood that skips samples, such as ``responsibility``), and ``pcl``
    follows :class:`ProbContrastiveLoss`'s contract (the mean over ranks is the global loss). So the mean over ranks
    of ``total`` is the single-process objective on the global batch and DDP's averaged gradient is its gradient.
    """

    def __init__(
        self,
        lam: float = 0.3,
        likelihood: str | Callable[..., Tensor] = "density",
        contrastive: ProbContrastiveLoss | None = None,
        nll_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if not float(lam) >= 0.0:
            raise ConfigError(f"lambda must be >= 0, got {lam}: set the contrastive weight (paper: 0.3)")
        if not float(nll_weight) >= 0.0 or float(nll_weight) == float(lam) == 0.0:
            raise ConfigError(
                f"nll_weight must be >= 0 and not 0 together with lambda (got nll_weight={nll_weight}, lambda={lam})"
            )
        self.lam = float(lam)
        self.nll_weight = float(nll_weight)
        self.likelihood = _resolve(LIKELIHOODS, likelihood, "likelihood")
        self.contrastive = contrastive if contrastive is not None else ProbContrastiveLoss()

    def forward(self, mixtures: GaussianMixture, z: Tensor, labels: Tensor) -> ObjectiveOutput:
        """Loss for ``2N`` views.

        Args:
            mixtures: the MDN's output for the ``2N`` views.
            z: ``(2N, n)`` points the likelihood is evaluated at (``h(x)`` in the KMCL reading).
            labels: ``(2N, C)`` multi-hot or soft labels.
        """
        if self.contrastive.gather and _distributed():
            nll = self.likelihood(*_gather_likelihood_inputs(mixtures, z, labels))
        else:
            nll = self.likelihood(mixtures, z, labels)
        pcl, stats = self.contrastive.forward_with_stats(mixtures, labels)
        total = self.nll_weight * nll + self.lam * pcl
        return ObjectiveOutput(total, nll, pcl, stats.valid_anchors, stats.anchors)


__all__ = [
    "LOSS_TERMS",
    "SIMILARITY_FORMS",
    "ContrastiveStats",
    "ObjectiveOutput",
    "ProbContrastiveLoss",
    "ProbMCLObjective",
    "contrastive_anchor_losses",
    "similarity_in_form",
]
