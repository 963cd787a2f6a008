"""A batch of isotropic Gaussian mixtures, the object the MDN produces and the similarities compare.

Sample ``i`` of a batch holds the mixture (paper Eq. 1, docs/math.md section 2)

    p_i(z) = sum_k pi_ik N(z; mu_ik 1, var_ik I_n),      z in R^n,

one scalar mean and one scalar variance per component, the component mean sitting on the diagonal ``mu_ik * 1``.
Every integral of such mixtures reduces to scalars, so the batch is four things: weights, means, variances (each
``(B, C)``) and the dimension ``n``.

A deviation from the paper, off by default (docs/math.md s.2b, ``contrastive.component_means: learned_directions``):
component k's mean may lie along a learned unit direction ``u_k`` shared by every sample instead of the diagonal,
``mu_ik sqrt(n) u_k`` (``u_k = 1 / sqrt(n)`` is the paper's ``mu_ik 1``), so that the density sees ``z`` through C
directions instead of through ``sum_i z_i`` alone. The batch then carries ``directions``, ``(C, n)`` unit rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

IndexLike = int | slice | Tensor | Sequence[int]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype mixture math runs in: float64 if any input is float64, else float32 (half inputs are cast up).

    docs/math.md: every mixture quantity is computed in float32 or float64, never in fp16/bf16.
    """
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def block_sizes(n: int, d: int, device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Sizes ``n_j`` of the ``d`` contiguous coordinate blocks of block means (docs/math.md s.2c), ``(d,)``.

    The first ``n mod d`` blocks hold ``n // d + 1`` coordinates, the others ``n // d``; they sum to ``n``.
    """
    if not 1 <= d <= n:
        raise ValueError(f"block means need 1 <= d <= n, got d = {d}, n = {n}")
    base, extra = divmod(n, d)
    return torch.tensor([base + (j < extra) for j in range(d)], device=device, dtype=dtype)


@dataclass(frozen=True)
class GaussianMixture:
    """A batch of ``B`` isotropic ``C``-component Gaussian mixtures in ``R^dim``.

    Attributes:
        weights: ``(B, C)`` mixture weights ``pi_ik``, non-negative, each row sums to 1.
        means: ``(B, C)`` component means ``mu_ik``; the mean vector of component k is ``mu_ik * 1`` in ``R^n``. Or
            ``(B, C, d)`` block means (docs/math.md s.2c): the mean vector is ``mu_ikj`` on the coordinates of block
            ``j`` (:func:`block_sizes`), ``1 <= d <= n``.
        variances: ``(B, C)`` component variances ``var_ik > 0`` (the MDN guarantees ``var >= 1``); the covariance
            of component k is ``var_ik * I_n``.
        dim: ``n``, the dimension of the space the mixture lives in.
        logw: optional ``(B, C)`` log-weights, kept when the producer has them exactly (``log_softmax``), so that a
            weight that underflows to 0 in ``weights`` keeps a finite log. Use :attr:`log_weights` to read them.
        directions: optional ``(C, n)`` unit vectors ``u_k`` shared by the batch: component k's mean vector is then
            ``mu_ik * sqrt(n) * u_k`` instead of ``mu_ik * 1``. None (the paper) means the diagonal. A similarity
            that assumes diagonal means calls :meth:`require_diagonal_means`.

    Example:
        >>> m = GaussianMixture(torch.full((2, 3), 1 / 3), torch.zeros(2, 3), torch.ones(2, 3), dim=16)
        >>> len(m), m[0:1].weights.shape
        (2, torch.Size([1, 3]))
    """

    weights: Tensor
    means: Tensor
    variances: Tensor
    dim: int
    logw: Tensor | None = field(default=None, repr=False, compare=False)
    directions: Tensor | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ basic protocol
    def __len__(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_components(self) -> int:
        """``C``, the number of components (one per class in ProbMCL)."""
        return int(self.weights.shape[1])

    @property
    def mean_dim(self) -> int:
        """``d``, the numbers per component mean: 1 for ``(B, C)`` means (the paper), else ``means.shape[2]``."""
        return 1 if self.means.ndim == 2 else int(self.means.shape[2])

    @property
    def log_weights(self) -> Tensor:
        """``(B, C)`` log mixture weights (float32 or float64); ``log(0)`` becomes ``log(tiny)`` (about -87 in float32)
        so that values and gradients stay finite."""
        if self.logw is not None:
            return self.logw
        weights = self.weights.to(compute_dtype(self.weights))  # fp16's tiny (6e-5) would raise small weights
        return weights.clamp_min(torch.finfo(weights.dtype).tiny).log()

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the parameter tensors."""
        return self.weights.dtype

    @property
    def device(self) -> torch.device:
        """device of the parameter tensors."""
        return self.weights.device

    def _map(self, fn: Any) -> GaussianMixture:
        """A new mixture with ``fn`` applied to every parameter tensor."""
        return GaussianMixture(
            fn(self.weights),
            fn(self.means),
            fn(self.variances),
            self.dim,
            None if self.logw is None else fn(self.logw),
            self.directions,
        )

    def __getitem__(self, index: IndexLike) -> GaussianMixture:
        """Select samples along the batch: an int (kept as a batch of one), slice, bool mask or index tensor (the
        shared ``directions`` stay as they are)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        elif not isinstance(index, (slice, Tensor)):
            index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        return self._map(lambda t: t[index])

    @staticmethod
    def cat(mixtures: Sequence[GaussianMixture]) -> GaussianMixture:
        """Concatenate mixtures along the batch; all must share ``dim`` and the number of components."""
        if not mixtures:
            raise ValueError("GaussianMixture.cat needs at least one mixture")
        dims = {m.dim for m in mixtures}
        comps = {m.num_components for m in mixtures}
        if len(dims) != 1 or len(comps) != 1:
            raise ValueError(f"cannot concatenate mixtures with dims {sorted(dims)} and components {sorted(comps)}")
        keep_log = all(m.logw is not None for m in mixtures)
        directions = mixtures[0].directions
        if any((m.directions is None) != (directions is None) for m in mixtures) or (
            directions is not None and any(not torch.equal(m.directions, directions) for m in mixtures)
        ):
            raise ValueError("cannot concatenate mixtures whose component directions differ")
        return GaussianMixture(
            torch.cat([m.weights for m in mixtures]),
            torch.cat([m.means for m in mixtures]),
            torch.cat([m.variances for m in mixtures]),
            mixtures[0].dim,
            torch.cat([m.log_weights for m in mixtures]) if keep_log else None,
            directions,
        )

    def to(self, *args: Any, **kwargs: Any) -> GaussianMixture:
        """``Tensor.to`` applied to every parameter (dtype and/or device), the directions included."""
        moved = self._map(lambda t: t.to(*args, **kwargs))
        if self.directions is None:
            return moved
        return GaussianMixture(*self._fields(moved), self.directions.to(*args, **kwargs))

    @staticmethod
    def _fields(m: GaussianMixture) -> tuple[Any, ...]:
        return (m.weights, m.means, m.variances, m.dim, m.logw)

    def float(self) -> GaussianMixture:
        """The mixture in float32."""
        return self.to(torch.float32)

    def double(self) -> GaussianMixture:
        """The mixture in float64."""
        return self.to(torch.float64)

    def detach(self) -> GaussianMixture:
        """The mixture with every parameter detached from the autograd graph, the directions included."""
        detached = self._map(lambda t: t.detach())
        if self.directions is None:
            return detached
        return GaussianMixture(*self._fields(detached), self.directions.detach())

    def with_directions(self, directions: Tensor | None) -> GaussianMixture:
        """The same mixtures with component means along ``directions`` (``(C, n)`` unit rows, or None: diagonal)."""
        return GaussianMixture(*self._fields(self), directions)

    def require_diagonal_means(self, what: str) -> None:
        """Raise ValueError naming ``what`` unless every component mean is ``mu_k 1`` (no ``directions``, ``d = 1``)."""
        if self.directions is not None:
            raise ValueError(
                f"{what} assumes component means on the diagonal (mu 1); these mixtures have learned mean directions "
                "(contrastive.component_means: learned_directions): use a similarity that supports them "
                "(bhattacharyya)"
            )
        if self.means.ndim == 3:
            raise ValueError(
                f"{what} assumes one number per component mean (mu 1); these mixtures have {self.mean_dim} "
                "(contrastive.mean_dim): use a similarity that supports block means (bhattacharyya)"
            )

    def squared_distances(self, z: Tensor, dtype: torch.dtype) -> Tensor:
        """``||z_i - m_ik||^2`` for every sample and component, ``(B, C)``, formed without cancellation.

        As ``ortho + along`` with two non-negative parts: for the diagonal (docs/math.md s.2)
        ``||z - zbar 1||^2 + n (zbar - mu_k)^2``; for learned directions (s.2b) ``(|z|^2 - a_k^2) + (a_k - sqrt(n)
        mu_k)^2``, ``a_k = u_k . z``; for block means (s.2c) ``sum_j ||z_j - zbar_j 1||^2 + sum_j n_j (zbar_j -
        mu_kj)^2``, ``z_j`` the coordinates of block j.
        """
        if self.means.ndim == 2:
            ortho, along = self.mean_offsets(z, dtype)
            return ortho + (along - (self.dim**0.5) * self.means.to(dtype)).square()
        sizes = block_sizes(self.dim, self.mean_dim, z.device, dtype)
        blocks = z.split([int(s) for s in sizes.tolist()], dim=1)
        zbar = torch.stack([b.mean(dim=1) for b in blocks], dim=1)  # (B, d)
        ortho = sum((b - b.mean(dim=1, keepdim=True)).square().sum(dim=1) for b in blocks)
        along = (sizes * (zbar[:, None, :] - self.means.to(dtype)).square()).sum(dim=2)
        return ortho[:, None] + along

    def mean_offsets(self, z: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Each point's offset from each component's mean direction, split along and across it (docs/math.md s.2b).

        Returns ``(ortho, along)`` with ``||z - mu_k sqrt(n) u_k||^2 = ortho_k + (along_k - sqrt(n) mu_k)^2``:
        ``along_k = u_k . z`` and ``ortho_k = ||z||^2 - along_k^2 >= 0`` (``(B, C)`` each; for the diagonal,
        ``along = sqrt(n) zbar`` and ``ortho = ||z - zbar 1||^2``, formed without cancellation).
        """
        n = self.dim
        if self.directions is None:
            zbar = z.mean(dim=1, keepdim=True)
            ortho = (z - zbar).square().sum(dim=1, keepdim=True).expand(-1, self.num_components)
            return ortho, (n**0.5) * zbar.expand(-1, self.num_components)
        u = self.directions.to(dtype)
        along = z @ u.T
        ortho = (z.square().sum(dim=1, keepdim=True) - along.square()).clamp_min(0.0)
        return ortho, along

    def upcast(self) -> GaussianMixture:
        """The mixture in its compute dtype (float64 stays, everything else becomes float32)."""
        dtype = compute_dtype(self.weights, self.means, self.variances)
        return self if self.dtype == dtype and self.means.dtype == dtype else self.to(dtype)

    # ------------------------------------------------------------------ validation
    def validate(self, *, atol: float = 1e-4) -> GaussianMixture:
        """Check shapes and constraints; returns ``self`` so it chains.

        Raises:
            ValueError: on a shape mismatch, ``dim < 1``, weights that are negative or do not sum to 1 (within
                ``atol``), non-positive variances, or non-finite values.
        """
        w, m, v = self.weights, self.means, self.variances
        if w.ndim != 2:
            raise ValueError(f"GaussianMixture.weights must be (B, C), got shape {tuple(w.shape)}")
        if m.ndim == 3 and (m.shape[:2] != w.shape or not 1 <= m.shape[2] <= self.dim):
            raise ValueError(
                f"GaussianMixture.means (B, C, d) must match weights {tuple(w.shape)} with 1 <= d <= dim = {self.dim}, "
                f"got shape {tuple(m.shape)}"
            )
        if m.ndim == 3 and self.directions is not None:
            raise ValueError("GaussianMixture: block means (B, C, d) and learned mean directions do not combine")
        shaped = (("variances", v),) if m.ndim == 3 else (("means", m), ("variances", v))
        for name, t in shaped + ((("logw", self.logw),) if self.logw is not None else ()):
            if t.shape != w.shape:
                raise ValueError(f"GaussianMixture.{name} has shape {tuple(t.shape)}, weights {tuple(w.shape)}")
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"GaussianMixture.dim must be a positive int, got {self.dim!r}")
        if self.directions is not None:
            if tuple(self.directions.shape) != (w.shape[1], self.dim):
                raise ValueError(
                    f"GaussianMixture.directions must be (C, n) = ({w.shape[1]}, {self.dim}), got "
                    f"{tuple(self.directions.shape)}"
                )
            norms = self.directions.detach().double().norm(dim=1)
            if (norms - 1).abs().max() > atol:
                raise ValueError("GaussianMixture.directions rows must be unit vectors")
        with torch.no_grad():
            if not (torch.isfinite(w).all() and torch.isfinite(m).all() and torch.isfinite(v).all()):
                raise ValueError("GaussianMixture has non-finite weights, means or variances")
            if (w < 0).any():
                raise ValueError("GaussianMixture.weights has negative entries")
            if w.shape[0] and (w.double().sum(1) - 1).abs().max() > atol:
                raise ValueError("GaussianMixture.weights rows must sum to 1")
            if (v <= 0).any():
                raise ValueError("GaussianMixture.variances must be positive")
        return self
