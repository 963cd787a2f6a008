"""Similarities between batches of isotropic Gaussian mixtures (the ``Sim`` of the paper's Eq. 3).

Each registered entry is ``f(a: GaussianMixture, b: GaussianMixture) -> Tensor (len(a), len(b))`` with values in
[0, 1], computed in float32 (float64 if the inputs are float64; half inputs are cast up) and in the log domain.

* ``correlation`` (docs/math.md section 4, the paper's default): the exact closed form
  ``K(p, q) / sqrt(K(p, p) K(q, q))`` with ``K(p, q) = integral p q``. It runs a blockwise kernel that never holds
  the ``(B, M, C, C)`` tensor of component pairs: tiles of rows x columns are evaluated, reduced and dropped, and
  recomputed in backward, so peak memory is ``O(B M + block^2 C^2)``. When ``a is b`` only the upper triangle of
  tiles is evaluated. ``backend="triton"`` (the default ``auto`` on CUDA) computes the same ``log K`` in one fused
  Triton kernel per direction (:mod:`probmcl_med.core.triton_correlation`).
* ``bhattacharyya`` (docs/math.md section 5): the matched-component LOWER BOUND
  ``sum_k sqrt(pi_k rho_k) BC(N_k, M_k)`` of the Bhattacharyya coefficient (there is no closed form between
  mixtures). It is exact for single-component mixtures and never exceeds the true coefficient.

Accuracy. For two components with variances ``s, t`` the variance factor of both quantities is
``(n/2) log((s + t) / (2 sqrt(s t)))``; it is computed as ``(n/2) log1p((sqrt(s) - sqrt(t))^2 / (2 sqrt(s t)))`` so
that it is exact to relative precision when ``s ~ t`` even for ``n = 4096``, and the large per-component terms
``-(n/4) log(2 s)`` are folded, in float64, into per-row log-weights shifted by their row maximum (a shift that cancels
exactly in the normalised correlation). A plain float32 evaluation of ``log K`` carries an absolute error of about
``(n/2) |log(2 s)| * 6e-8`` (1e-3 at n = 4096, var = 1e4); this one an error proportional to ``|log Sim|``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from probmcl_med.core.bhattacharyya import bhattacharyya_similarity, log_bhattacharyya_similarity
from probmcl_med.core.component_pairs import check_pair, log_variance_ratio
from probmcl_med.core.correlation_grads import fold_symmetric_grad, side_grads
from probmcl_med.core.mixture import GaussianMixture, compute_dtype
from probmcl_med.registry import SIMILARITIES

DEFAULT_TILE_ELEMENTS = 1 << 21
"""Component pairs held per tile on CPU: ``block^2 C^2 <= DEFAULT_TILE_ELEMENTS`` (8 MiB per float32 buffer).

The kernel keeps about six tile-sized buffers alive in backward, so the default peak is about 50 MiB above the
``(B, M)`` outputs, whatever the batch size. On 2 CPU cores tiles of 2^19 to 2^22 pairs ran equally fast.
"""

DEFAULT_TILE_ELEMENTS_CUDA = 1 << 24
"""Component pairs per tile on a GPU (64 MiB per float32 buffer, about 400 MiB peak): larger tiles mean fewer
kernel launches, which is what bounds the speed of small tiles on a GPU."""


_EXP_FLOOR = -60.0
"""Log-terms more than 60 below the largest of their sum are raised to -60 before ``exp``.

It changes a sum of at most C^2 = 10^4 such terms by a relative 1e-22 (below float64 rounding) and keeps ``exp`` and
the products after it out of subnormal numbers, which run about 15x slower on x86 CPUs.
"""


def default_block_size(num_components: int, tile_elements: int | None = None, device: str = "cpu") -> int:
    """Rows (and columns) per tile so that ``block^2 * C^2 <= tile_elements`` (at least 1); ``tile_elements``
    defaults to :data:`DEFAULT_TILE_ELEMENTS`, or :data:`DEFAULT_TILE_ELEMENTS_CUDA` for a ``cuda`` device."""
    if tile_elements is None:
        tile_elements = DEFAULT_TILE_ELEMENTS_CUDA if device == "cuda" else DEFAULT_TILE_ELEMENTS
    return max(1, math.isqrt(max(1, tile_elements // max(1, num_components) ** 2)))


# ---------------------------------------------------------------------------------------------------- shared pieces
def _row_terms(m: GaussianMixture, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row inputs of the correlation kernel: shifted log-weights ``w``, means, variances, all ``(B, C)``.

    ``w_ik = log pi_ik - (n/4) log(2 var_ik) - max_k(...)``, formed in float64 (the terms reach 1e4 at n = 4096) and
    then cast to ``dtype``. The row shift is detached; it cancels exactly in ``log K_ij - (log K_ii + log K_jj) / 2``.
    """
    n = m.dim
    logw = m.log_weights.to(torch.float64)
    var = m.variances.to(torch.float64)
    c = logw - (n / 4) * torch.log(2 * var)
    shift = c.amax(dim=1, keepdim=True).detach()
    return (c - shift).to(dtype), m.means.to(dtype), m.variances.to(dtype)


class _Workspace:
    """Four reusable flat buffers that hold the tiles, so that a kernel call allocates them once.

    Fresh multi-megabyte tensors per tile cost page faults on every first touch (a third of the CPU time here). With
    ``capacity`` 0 every request allocates (the small self terms).
    """

    def __init__(self, capacity: int, like: Tensor) -> None:
        self.buffers = [like.new_empty(capacity) for _ in range(4)] if capacity else []

    def get(self, index: int, shape: torch.Size, like: Tensor) -> Tensor:
        numel = math.prod(shape)
        if self.buffers and numel <= self.buffers[index].numel():
            return self.buffers[index][:numel].view(shape)
        return like.new_empty(shape)


def _log1p_into(q: Tensor, u: Tensor, out: Tensor) -> Tensor:
    """``log1p(q)`` for ``q >= 0`` into ``out`` (``u`` scratch; ``q`` consumed), accurate to a few ulp and about 7x
    faster than ``torch.log1p`` on CPU, which is not vectorised and dominated the kernel's time.

    The classic correction: with ``u = fl(1 + q)``, ``log1p(q) = log(u) - ((u - 1) - q) / u`` (D. Goldberg, "What
    every computer scientist should know about floating-point arithmetic", 1991, Theorem 4).
    """
    torch.add(q, 1.0, out=u)
    torch.log(u, out=out)
    u.sub_(1.0)  # u - 1: exact (Sterbenz) where it matters
    q.sub_(u).neg_().div_(u.add_(1.0))  # ((u - 1) - q) / u; adding 1 back restores u exactly
    return out.sub_(q)


def _tile_logits(
    wa: Tensor, ma: Tensor, va: Tensor, wb: Tensor, mb: Tensor, vb: Tensor, n: int, ws: _Workspace | None = None
) -> Tensor:
    """Log-integrand of ``K`` for every component pair, up to the per-row shifts (docs/math.md sections 2 and 4).

    ``T = w_a + w_b - (n/2) log1p((sd_a - sd_b)^2 / (2 sd_a sd_b)) - (n/2) (mu_a - mu_b)^2 / (var_a + var_b)``

    which equals ``log pi_a + log rho_b + log N(mu_a 1; mu_b 1, (var_a + var_b) I_n) + (n/2) log(4 pi)`` minus the
    row shifts. Inputs broadcast against each other (``(b, 1, C, 1)`` against ``(1, m, 1, C)`` for a tile of pairs of
    samples, ``(B, C, 1)`` against ``(B, 1, C)`` for the self terms). The result lives in workspace buffer 3 (a fresh
    tensor without a workspace); buffers 0-2 are free again on return. No autograd.
    """
    shape = torch.broadcast_shapes(wa.shape, wb.shape)
    ws = ws or _Workspace(0, wa)
    b0, b1, b2, b3 = (ws.get(i, shape, wa) for i in range(4))
    sd_a, sd_b = va.sqrt(), vb.sqrt()
    torch.sub(sd_a, sd_b, out=b0).square_().mul_(0.5 / sd_a).mul_(1.0 / sd_b)  # q
    log_ratio = _log1p_into(b0, b1, b2)
    torch.sub(ma, mb, out=b0).square_().div_(torch.add(va, vb, out=b1))  # (mu_a - mu_b)^2 / s
    log_ratio.add_(b0)
    return torch.add(wa, wb, out=b3).add_(log_ratio, alpha=-0.5 * n)


def _logsumexp_pairs(t: Tensor, dims: tuple[int, int]) -> Tensor:
    """``logsumexp`` over two dims of a tile ``t`` (consumed in place)."""
    mx = t.amax(dim=dims, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    t.sub_(mx).clamp_(min=_EXP_FLOOR).exp_()
    return t.sum(dim=dims[1]).sum(dim=dims[0]).log_() + mx.squeeze(dims[1]).squeeze(dims[0])


def _tile_grad_terms(
    wa: Tensor,
    ma: Tensor,
    va: Tensor,
    wb: Tensor,
    mb: Tensor,
    vb: Tensor,
    n: int,
    logk: Tensor,
    g: Tensor,
    ws: _Workspace | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The three tile tensors whose partial sums are the gradients of ``sum g * logK``.

    With ``P = softmax over the component pair of T`` (``exp(T - logK)``), ``Q = g P``, ``s = var_a + var_b``,
    ``u = (mu_a - mu_b) / s``:

    * ``dT/dw_a = dT/dw_b = 1``                                  -> ``Q``
    * ``dT/dmu_a = -n u``, ``dT/dmu_b = +n u``                    -> ``Q u``
    * ``dT/dvar_a = (n/2)(u^2 - 1/s) + n / (4 var_a)`` (same for b) -> ``Q (u^2 - 1/s)``

    ``logk`` and ``g`` are shaped to broadcast against the tile (unit dims where the pair is).
    """
    ws = ws or _Workspace(0, wa)
    q = _tile_logits(wa, ma, va, wb, mb, vb, n, ws)  # buffer 3
    q.sub_(logk).clamp_(min=_EXP_FLOOR).exp_().mul_(g)
    shape = q.shape
    inv_s = torch.add(va, vb, out=ws.get(0, shape, wa)).reciprocal_()
    u = torch.sub(ma, mb, out=ws.get(1, shape, wa)).mul_(inv_s)
    qu = torch.mul(u, q, out=ws.get(2, shape, wa))
    u.square_().sub_(inv_s).mul_(q)  # Q (u^2 - 1/s)
    return q, qu, u


# ---------------------------------------------------------------------------------------------------- kernels
class _SelfLogK(torch.autograd.Function):
    """``log K(p_i, p_i)`` up to the row shift, ``(B,)``: a ``(B, C, C)`` evaluation (small), analytic backward.

    The diagonal pair ``k == l`` uses ``var_k + var_k = 2 var_k`` (docs/math.md section 4).
    """

    @staticmethod
    def forward(ctx: Any, w: Tensor, m: Tensor, v: Tensor, n: int) -> Tensor:
        a = (w[:, :, None], m[:, :, None], v[:, :, None])
        b = (w[:, None, :], m[:, None, :], v[:, None, :])
        out = _logsumexp_pairs(_tile_logits(*a, *b, n), (1, 2))
        ctx.save_for_backward(w, m, v, out)
        ctx.n = n
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        w, m, v, out = ctx.saved_tensors
        n = ctx.n
        a = (w[:, :, None], m[:, :, None], v[:, :, None])
        b = (w[:, None, :], m[:, None, :], v[:, None, :])
        q, qu, quv = _tile_grad_terms(*a, *b, n, out[:, None, None], grad[:, None, None])
        ga = side_grads(q.sum(2), qu.sum(2), quv.sum(2), v, n, -1.0)
        gb = side_grads(q.sum(1), qu.sum(1), quv.sum(1), v, n, +1.0)
        return ga[0] + gb[0], ga[1] + gb[1], ga[2] + gb[2], None


def _blocks(total: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, total)) for s in range(0, total, block)]


class _CrossLogK(torch.autograd.Function):
    """``log K(p_i, q_j)`` up to the row shifts, ``(B, M)``, tile by tile; recomputed tile by tile in backward.

    With ``symmetric`` (``a is b``) only tiles on or above the diagonal are evaluated and mirrored.
    """

    @staticmethod
    def forward(
        ctx: Any,
        wa: Tensor,
        ma: Tensor,
        va: Tensor,
        wb: Tensor,
        mb: Tensor,
        vb: Tensor,
        n: int,
        block: int,
        symmetric: bool,
    ) -> Tensor:
        rows, cols = _blocks(wa.shape[0], block), _blocks(wb.shape[0], block)
        out = wa.new_empty(wa.shape[0], wb.shape[0])
        ws = _Workspace(min(block, wa.shape[0]) * min(block, wb.shape[0]) * wa.shape[1] ** 2, wa)
        for bi, (r0, r1) in enumerate(rows):
            a = (wa[r0:r1, None, :, None], ma[r0:r1, None, :, None], va[r0:r1, None, :, None])
            for bj, (c0, c1) in enumerate(cols):
                if symmetric and bj < bi:
                    continue
                b = (wb[None, c0:c1, None, :], mb[None, c0:c1, None, :], vb[None, c0:c1, None, :])
                tile = _logsumexp_pairs(_tile_logits(*a, *b, n, ws), (2, 3))
                out[r0:r1, c0:c1] = tile
                if symmetric and bj > bi:
                    out[c0:c1, r0:r1] = tile.T
        ctx.save_for_backward(wa, ma, va, wb, mb, vb, out)
        ctx.n, ctx.block, ctx.symmetric = n, block, symmetric
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        wa, ma, va, wb, mb, vb, out = ctx.saved_tensors
        n, block, symmetric = ctx.n, ctx.block, ctx.symmetric
        grad = grad.to(out.dtype)
        if symmetric:
            grad = fold_symmetric_grad(grad)
        ga = [torch.zeros_like(wa), torch.zeros_like(ma), torch.zeros_like(va)]
        gb = [torch.zeros_like(wb), torch.zeros_like(mb), torch.zeros_like(vb)]
        rows, cols = _blocks(wa.shape[0], block), _blocks(wb.shape[0], block)
        ws = _Workspace(min(block, wa.shape[0]) * min(block, wb.shape[0]) * wa.shape[1] ** 2, wa)
        for bi, (r0, r1) in enumerate(rows):
            a = (wa[r0:r1, None, :, None], ma[r0:r1, None, :, None], va[r0:r1, None, :, None])
            for bj, (c0, c1) in enumerate(cols):
                if symmetric and bj < bi:
                    continue
                g = grad[r0:r1, c0:c1]
                b = (wb[None, c0:c1, None, :], mb[None, c0:c1, None, :], vb[None, c0:c1, None, :])
                logk = out[r0:r1, c0:c1, None, None]
                terms = _tile_grad_terms(*a, *b, n, logk, g[:, :, None, None], ws)
                # sum over (j, l) and over (i, k), one dimension at a time: 2-4x faster than a 2-d reduction on CPU
                side_a = side_grads(*(t.sum(3).sum(1) for t in terms), va[r0:r1], n, -1.0)
                side_b = side_grads(*(t.sum(0).sum(1) for t in terms), vb[c0:c1], n, 1.0)
                for k in range(3):
                    ga[k][r0:r1] += side_a[k]
                    gb[k][c0:c1] += side_b[k]
        # with ``a is b`` the same tensors were passed as both sides: autograd adds the two sides' gradients
        return (*ga, *gb, None, None, None)


# ---------------------------------------------------------------------------------------------------- similarities
BACKENDS = ("auto", "torch", "triton")
"""Implementations of the correlation similarity's ``log K``: ``torch`` (the blockwise kernel above), ``triton`` (one
fused kernel, :mod:`probmcl_med.core.triton_correlation`), ``auto`` (triton for CUDA tensors when Triton imports, else
torch)."""


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device) -> str:
    """``torch`` or ``triton`` for ``backend`` in :data:`BACKENDS` and tensors on ``device``; ``auto`` picks triton
    only for a CUDA device with Triton importable."""
    if backend not in BACKENDS:
        raise ValueError(f"correlation backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and _triton_available() else "torch"
    if backend == "triton" and not _triton_available():
        raise RuntimeError("correlation backend 'triton' needs the triton package (CUDA builds of torch ship it)")
    return backend


def log_correlation_similarity(
    a: GaussianMixture, b: GaussianMixture, block_size: int | None = None, backend: str = "auto"
) -> Tensor:
    """``log Sim(p_i, q_j)`` of the correlation coefficient, ``(len(a), len(b))``, <= 0; see
    :func:`correlation_similarity`."""
    check_pair(a, b)
    a.require_diagonal_means("the correlation similarity")
    use_triton = resolve_backend(backend, a.device) == "triton"
    dtype = compute_dtype(a.weights, a.means, a.variances, b.weights, b.means, b.variances)
    n = a.dim
    block = block_size or default_block_size(a.num_components, device=a.device.type)
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    symmetric = a is b
    wa, ma, va = _row_terms(a, dtype)
    wb, mb, vb = (wa, ma, va) if symmetric else _row_terms(b, dtype)
    if use_triton:
        from probmcl_med.core.triton_correlation import cross_log_k

        cross = cross_log_k((wa, ma, va), (wb, mb, vb), n, symmetric)
    else:
        cross = _CrossLogK.apply(wa, ma, va, wb, mb, vb, n, block, symmetric)
    # the fused kernel's symmetric diagonal is K(p_i, p_i) itself (the same pairs): no separate self term needed
    self_a = cross.diagonal() if symmetric and use_triton else _SelfLogK.apply(wa, ma, va, n)
    self_b = self_a if symmetric else _SelfLogK.apply(wb, mb, vb, n)
    log_sim = (cross - 0.5 * self_a[:, None] - 0.5 * self_b[None, :]).clamp(max=0.0)
    if symmetric:  # Sim(p, p) = 1 exactly, a constant
        log_sim = log_sim.masked_fill(torch.eye(len(a), dtype=torch.bool, device=log_sim.device), 0.0)
    return log_sim


def correlation_similarity(
    a: GaussianMixture, b: GaussianMixture, block_size: int | None = None, backend: str = "auto"
) -> Tensor:
    """Correlation coefficient ``K(p, q) / sqrt(K(p, p) K(q, q))`` between mixtures, exact (docs/math.md s.4).

    ``K(p, q) = integral p q = sum_k sum_l pi_k rho_l N(mu_k 1; nu_l 1, (var_k + s_l) I_n)``, evaluated as a
    log-sum-exp over the ``C x C`` component pairs; the self term uses ``var_k + var_l`` for every pair, ``2 var_k`` on
    the diagonal (published Cauchy-Schwarz code used ``var_k`` there: a ``2^(n/2)`` error, not repeated here).

    The ``(len(a), len(b), C, C)`` tensor is never held: tiles of ``block_size`` rows x ``block_size`` columns are
    evaluated and recomputed in backward (custom autograd Function with an analytic gradient). With ``a is b`` (the
    contrastive loss) only the upper triangle of tiles is computed and the diagonal is exactly 1.

    Args:
        a: ``B`` mixtures; b: ``M`` mixtures with the same ``dim`` and number of components.
        block_size: rows/columns per tile of the torch backend; default :func:`default_block_size` (tiles of about
            2^21 pairs on CPU, 2^24 on a GPU). Peak extra memory is about 6 buffers of ``block^2 C^2`` floats.
        backend: ``torch``, ``triton`` (one fused kernel per direction, :mod:`probmcl_med.core.triton_correlation`;
            CUDA tensors) or ``auto`` (triton on CUDA when Triton imports, else torch); same values and gradients.

    Returns:
        ``(B, M)`` similarities in [0, 1], float32 (float64 for float64 inputs); 1 iff the mixtures are equal.
    """
    return log_correlation_similarity(a, b, block_size, backend).exp()


# the exact log forms (``contrastive.similarity_form: log``, docs/math.md s.7b); a plugin may set its own
correlation_similarity.log_form = log_correlation_similarity  # type: ignore[attr-defined]
bhattacharyya_similarity.log_form = log_bhattacharyya_similarity  # type: ignore[attr-defined]
SIMILARITIES.register("correlation", correlation_similarity)
SIMILARITIES.register("bhattacharyya", bhattacharyya_similarity)

__all__ = [
    "BACKENDS",
    "DEFAULT_TILE_ELEMENTS",
    "DEFAULT_TILE_ELEMENTS_CUDA",
    "bhattacharyya_similarity",
    "correlation_similarity",
    "default_block_size",
    "log_bhattacharyya_similarity",
    "log_correlation_similarity",
    "log_variance_ratio",
    "resolve_backend",
]
