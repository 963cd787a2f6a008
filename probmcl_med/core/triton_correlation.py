"""Fused Triton kernels for ``log K(p_i, q_j)`` of the correlation similarity (docs/math.md section 4).

The same quantity as :class:`probmcl_med.core.similarities._CrossLogK` (the torch backend), from the same per-row inputs
(shifted log-weights ``w``, means, variances, each ``(B, C)``), in one kernel launch forward and one backward:

* **Blocking.** One program per tile of ``BLOCK_ROWS`` rows of ``a`` x ``BLOCK_ROWS`` rows of ``b`` (a list of tiles
  built on the host; with ``symmetric`` (``a is b``) only the tiles on or above the diagonal, each stored twice).
  Inside a program the ``C x C`` component pairs are visited as ``C / BLOCK_COMPONENTS`` chunks of ``b``-components
  (outer loop) x the ``C`` components of ``a`` (inner loop): each step evaluates a ``(rows, rows, chunk)`` block of
  log-integrands and folds it into an online log-sum-exp (a running maximum and a rescaled running sum per output
  entry, one rescale per step). Nothing of size ``B M C^2`` is ever stored; memory is the ``(B, M)`` output.
* **Backward** recomputes the same log-integrands ``T`` from the saved inputs and the saved ``log K``, forms
  ``Q = g exp(T - log K)`` and the two other tile tensors ``Q u`` and ``Q (u^2 - 1/s)`` (``u = (mu_a - mu_b) / s``,
  ``s = var_a + var_b``; see ``_tile_grad_terms`` in :mod:`probmcl_med.core.similarities`), and reduces them to per-row,
  per-component sums for both sides. The ``b`` side of a chunk accumulates in registers over the ``a``-components
  and is stored once; the ``a`` side of component ``k`` is complete per chunk and added (``atomic_add`` on addresses
  that only this program touches, so the order is fixed). Every program writes to its own slice of a partial buffer
  (``a`` side indexed by the column tile, ``b`` side by the row tile), summed on the host: deterministic, no
  contention. The host turns the three sums into the gradients w.r.t. ``w``, ``mu``, ``var`` with the torch
  backend's own :func:`~probmcl_med.core.correlation_grads.side_grads`.
* **Symmetric half.** With ``a is b``, ``log K`` is symmetric: the upstream gradient is folded to the upper triangle
  (``G_ij + G_ji`` for ``i < j``, ``G_ii`` on the diagonal) and only the upper tiles run, as in the torch backend.
* **Precision.** Arithmetic and accumulation in the inputs' dtype: float32 (float64 inputs run in float64). The
  log-variance ratio is ``log1p((sd_a - sd_b)^2 / (2 sd_a sd_b))`` with the same ``log1p`` correction as the torch
  backend (D. Goldberg 1991, Theorem 4) and standard deviations taken by torch (correctly rounded) on the host, so
  it is exact to relative precision when ``var_a ~ var_b``.

The kernels are built when this module is imported: Triton's interpreter versions (CPU tensors, slowly; the tests
use them) when ``TRITON_INTERPRET=1`` was set before ``triton`` itself was first imported, otherwise GPU kernels
compiled on first use. Import it only where Triton is wanted:
:func:`probmcl_med.core.similarities.correlation_similarity` does so lazily.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from probmcl_med.core.correlation_grads import fold_symmetric_grad, side_grads


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # Triton >= 3.4; before, the environment variable itself
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


INTERPRETED = _interpreting()
"""Whether the kernels were built for Triton's interpreter (``TRITON_INTERPRET=1`` when triton was imported)."""


@dataclass(frozen=True)
class Blocks:
    """Launch shape of the kernels.

    Attributes:
        rows: rows of ``a`` and of ``b`` per program (a power of 2).
        components: ``b``-components per step of the inner loop (a power of 2; capped at the next power of 2 >= C).
        warps_forward: warps per program in forward.
        warps_backward: warps per program in backward.
    """

    rows: int = 16
    components: int = 16
    warps_forward: int = 4
    warps_backward: int = 4

    def chunk(self, num_components: int) -> int:
        """``b``-components per step for ``C`` components: ``min(components, next power of 2 >= C)``, >= 2."""
        return max(2, min(self.components, triton.next_power_of_2(num_components)))


DEFAULT_BLOCKS = Blocks()


# ---------------------------------------------------------------------------------------------------- device code
@triton.jit
def _pair_logits(wa, ma, va, sda, wb, mb, vb, sdb, half_n):
    """``T = w_a + w_b - (n/2) (log1p(q) + (mu_a - mu_b)^2 / (var_a + var_b))``, ``q = (sd_a - sd_b)^2 / (2 sd_a
    sd_b)`` (the torch backend's ``_tile_logits``), on broadcast blocks."""
    diff = sda - sdb
    q = diff * diff * (0.5 / sda) * (1.0 / sdb)
    u = 1.0 + q
    log1p_q = tl.log(u) - ((u - 1.0) - q) / u
    d = ma - mb
    return (wa + wb) - half_n * (log1p_q + d * d / (va + vb))


@triton.jit
def _tile_rows(tiles, n_tiles, BLOCK_ROWS: tl.constexpr):
    """This program's tile: ``(row block of a, row block of b)`` and the row indices of both sides."""
    pid = tl.program_id(0)
    bi = tl.load(tiles + pid)
    bj = tl.load(tiles + n_tiles + pid)
    return bi, bj, bi * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS), bj * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)


@triton.jit
def _load_b_chunk(wb, mb, vb, sb, rj, mask_j, l0, C, BLOCK_L: tl.constexpr):
    """``b``-side inputs (``w``, mean, variance, standard deviation) of components ``l0 .. l0 + BLOCK_L`` as ``(1,
    rows, BLOCK_L)`` blocks; components past ``C`` get ``w = -inf`` (no weight) and harmless finite means and
    variances; rows past the end finite values."""
    cl = l0 + tl.arange(0, BLOCK_L)
    mask_l = cl < C
    offs = rj[:, None] * C + cl[None, :]
    mask = mask_j[:, None] & mask_l[None, :]
    w = tl.load(wb + offs, mask=mask, other=0.0)
    w = tl.where(mask_l[None, :], w, float("-inf"))
    m = tl.load(mb + offs, mask=mask, other=0.0)
    v = tl.load(vb + offs, mask=mask, other=1.0)
    sd = tl.load(sb + offs, mask=mask, other=1.0)
    return cl, mask_l, w[None, :, :], m[None, :, :], v[None, :, :], sd[None, :, :]


@triton.jit
def _load_a_component(wa, ma, va, sa, ri, mask_i, k, C):
    """``a``-side inputs of component ``k`` as ``(rows, 1, 1)`` blocks (finite values past the last row)."""
    offs = ri * C + k
    w = tl.load(wa + offs, mask=mask_i, other=0.0)
    m = tl.load(ma + offs, mask=mask_i, other=0.0)
    v = tl.load(va + offs, mask=mask_i, other=1.0)
    sd = tl.load(sa + offs, mask=mask_i, other=1.0)
    return w[:, None, None], m[:, None, None], v[:, None, None], sd[:, None, None]


@triton.jit
def _cross_logk_forward(
    wa, ma, va, sa, wb, mb, vb, sb, out, tiles, n_tiles, rows_a, rows_b, C, half_n,
    SYMMETRIC: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """``out[i, j] = logsumexp_{k,l} T_ijkl`` for this program's tile (and ``out[j, i]`` off the diagonal when
    ``SYMMETRIC``)."""
    bi, bj, ri, rj = _tile_rows(tiles, n_tiles, BLOCK_ROWS)
    mask_i, mask_j = ri < rows_a, rj < rows_b
    run_max = tl.full((BLOCK_ROWS, BLOCK_ROWS), float("-inf"), dtype=wa.dtype.element_ty)
    run_sum = tl.zeros((BLOCK_ROWS, BLOCK_ROWS), dtype=wa.dtype.element_ty)
    for l0 in range(0, C, BLOCK_L):
        _, _, w_b, m_b, v_b, sd_b = _load_b_chunk(wb, mb, vb, sb, rj, mask_j, l0, C, BLOCK_L)
        for k in range(C):
            w_a, m_a, v_a, sd_a = _load_a_component(wa, ma, va, sa, ri, mask_i, k, C)
            t = _pair_logits(w_a, m_a, v_a, sd_a, w_b, m_b, v_b, sd_b, half_n)
            new_max = tl.maximum(run_max, tl.max(t, axis=2))  # finite: every chunk has a real component
            run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(t - new_max[:, :, None]), axis=2)
            run_max = new_max
    logk = run_max + tl.log(run_sum)
    mask = mask_i[:, None] & mask_j[None, :]
    tl.store(out + ri[:, None] * rows_b + rj[None, :], logk, mask=mask)
    if SYMMETRIC:
        tl.store(out + rj[None, :] * rows_a + ri[:, None], logk, mask=mask & (bj > bi))


@triton.jit
def _cross_logk_backward(
    wa, ma, va, sa, wb, mb, vb, sb, logk, grad, part_a, part_b, qa, qb, tiles, n_tiles, rows_a, rows_b, C, half_n,
    BLOCK_ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """Per-tile sums of ``Q``, ``Q u``, ``Q (u^2 - 1/s)`` over the other side: ``part_a[s, bj, i, k]`` (sum over the
    tile's ``j`` and all ``l``) and ``part_b[s, bi, j, l]`` (sum over the tile's ``i`` and all ``k``), ``s`` = the
    three quantities, ``qa`` and ``qb`` the strides of ``s``."""
    bi, bj, ri, rj = _tile_rows(tiles, n_tiles, BLOCK_ROWS)
    mask_i, mask_j = ri < rows_a, rj < rows_b
    offs = ri[:, None] * rows_b + rj[None, :]
    mask = mask_i[:, None] & mask_j[None, :]
    g = tl.load(grad + offs, mask=mask, other=0.0)[:, :, None]
    lk = tl.load(logk + offs, mask=mask, other=0.0)[:, :, None]
    a_base = part_a + (bj * rows_a + ri) * C  # this program's slice of quantity 0; quantity s at + s * qa
    b_base = part_b + (bi * rows_b + rj) * C
    for l0 in range(0, C, BLOCK_L):
        cl, mask_l, w_b, m_b, v_b, sd_b = _load_b_chunk(wb, mb, vb, sb, rj, mask_j, l0, C, BLOCK_L)
        acc_q = tl.zeros((BLOCK_ROWS, BLOCK_L), dtype=wa.dtype.element_ty)
        acc_qu = tl.zeros((BLOCK_ROWS, BLOCK_L), dtype=wa.dtype.element_ty)
        acc_qv = tl.zeros((BLOCK_ROWS, BLOCK_L), dtype=wa.dtype.element_ty)
        for k in range(C):
            w_a, m_a, v_a, sd_a = _load_a_component(wa, ma, va, sa, ri, mask_i, k, C)
            t = _pair_logits(w_a, m_a, v_a, sd_a, w_b, m_b, v_b, sd_b, half_n)
            q = tl.exp(t - lk) * g  # 0 for padded components (T = -inf) and padded rows (g = 0)
            inv_s = 1.0 / (v_a + v_b)
            u = (m_a - m_b) * inv_s
            qu = q * u
            qv = q * (u * u - inv_s)
            acc_q += tl.sum(q, axis=0)
            acc_qu += tl.sum(qu, axis=0)
            acc_qv += tl.sum(qv, axis=0)
            tl.atomic_add(a_base + k, tl.sum(tl.sum(q, axis=2), axis=1), mask=mask_i, sem="relaxed")
            tl.atomic_add(a_base + qa + k, tl.sum(tl.sum(qu, axis=2), axis=1), mask=mask_i, sem="relaxed")
            tl.atomic_add(a_base + 2 * qa + k, tl.sum(tl.sum(qv, axis=2), axis=1), mask=mask_i, sem="relaxed")
        offs_b = b_base[:, None] + cl[None, :]
        mask_b = mask_j[:, None] & mask_l[None, :]
        tl.store(offs_b, acc_q, mask=mask_b)
        tl.store(offs_b + qb, acc_qu, mask=mask_b)
        tl.store(offs_b + 2 * qb, acc_qv, mask=mask_b)


# ---------------------------------------------------------------------------------------------------- host side
@functools.lru_cache(maxsize=64)
def _tiles(rows_a: int, rows_b: int, block: int, symmetric: bool, device: torch.device) -> Tensor:
    """``(2, n_tiles)`` int32: row-block indices of ``a`` (first row) and ``b`` (second row) of every program; with
    ``symmetric`` only the tiles with ``bj >= bi``. Cached: a training run asks for the same few shapes."""
    n_i, n_j = triton.cdiv(rows_a, block), triton.cdiv(rows_b, block)
    bi, bj = torch.meshgrid(torch.arange(n_i), torch.arange(n_j), indexing="ij")
    keep = bj >= bi if symmetric else torch.ones_like(bi, dtype=torch.bool)
    return torch.stack([bi[keep], bj[keep]]).to(device=device, dtype=torch.int32).contiguous()


def _check_inputs(tensors: tuple[Tensor, ...]) -> None:
    device = tensors[0].device
    if device.type != "cuda" and not INTERPRETED:
        raise RuntimeError(
            f"the Triton correlation kernel runs on CUDA tensors, got {device.type} tensors: use backend='torch' (or set "
            "TRITON_INTERPRET=1 before anything imports triton, to run Triton's interpreter on the CPU)"
        )
    if tensors[0].dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the Triton correlation kernel takes float32 or float64 inputs, got {tensors[0].dtype}")


class TritonCrossLogK(torch.autograd.Function):
    """``log K(p_i, q_j)`` up to the row shifts, ``(B, M)``: same inputs, output and gradients as
    :class:`probmcl_med.core.similarities._CrossLogK`, computed by the fused kernels above.

    ``apply(wa, ma, va, wb, mb, vb, n, symmetric, blocks)``: ``(B, C)`` and ``(M, C)`` float32/float64 tensors
    (shifted log-weights, means, variances), ``n`` the dimension, ``symmetric`` when ``b`` is ``a`` (pass the same
    tensors), ``blocks`` a :class:`Blocks` or ``None`` for :data:`DEFAULT_BLOCKS`.
    """

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Tensor:
        *tensors, n, symmetric, blocks = args
        wa, ma, va, wb, mb, vb = (t.contiguous() for t in tensors)
        _check_inputs((wa, ma, va, wb, mb, vb))
        blocks = blocks or DEFAULT_BLOCKS
        rows_a, rows_b, comps = wa.shape[0], wb.shape[0], wa.shape[1]
        tiles = _tiles(rows_a, rows_b, blocks.rows, symmetric, wa.device)
        out = wa.new_empty(rows_a, rows_b)
        n_tiles = tiles.shape[1]
        _cross_logk_forward[(n_tiles,)](
            wa, ma, va, va.sqrt(), wb, mb, vb, vb.sqrt(), out, tiles, n_tiles, rows_a, rows_b, comps, 0.5 * n,
            SYMMETRIC=symmetric, BLOCK_ROWS=blocks.rows, BLOCK_L=blocks.chunk(comps), num_warps=blocks.warps_forward,
        )  # fmt: skip
        ctx.save_for_backward(wa, ma, va, wb, mb, vb, out, tiles)
        ctx.n, ctx.symmetric, ctx.blocks = n, symmetric, blocks
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        wa, ma, va, wb, mb, vb, out, tiles = ctx.saved_tensors
        n, symmetric, blocks = ctx.n, ctx.symmetric, ctx.blocks
        grad = grad.to(out.dtype)
        grad = (fold_symmetric_grad(grad) if symmetric else grad).contiguous()
        rows_a, rows_b, comps = wa.shape[0], wb.shape[0], wa.shape[1]
        n_i, n_j = triton.cdiv(rows_a, blocks.rows), triton.cdiv(rows_b, blocks.rows)
        part_a = wa.new_zeros(3, n_j, rows_a, comps)
        part_b = wa.new_zeros(3, n_i, rows_b, comps)
        n_tiles = tiles.shape[1]
        _cross_logk_backward[(n_tiles,)](
            wa, ma, va, va.sqrt(), wb, mb, vb, vb.sqrt(), out, grad, part_a, part_b, part_a[0].numel(),
            part_b[0].numel(), tiles, n_tiles, rows_a, rows_b, comps, 0.5 * n, BLOCK_ROWS=blocks.rows, BLOCK_L=blocks.chunk(comps),
            num_warps=blocks.warps_backward,
        )  # fmt: skip
        side_a = side_grads(*part_a.sum(1), va, n, -1.0)
        side_b = side_grads(*part_b.sum(1), vb, n, 1.0)
        # with ``symmetric`` the same tensors were passed as both sides: autograd adds the two sides' gradients
        return (*side_a, *side_b, None, None, None)


def cross_log_k(
    a: tuple[Tensor, Tensor, Tensor],
    b: tuple[Tensor, Tensor, Tensor],
    n: int,
    symmetric: bool,
    blocks: Blocks | None = None,
) -> Tensor:
    """``log K`` between the rows of two mixtures, ``(B, M)``, from their kernel inputs ``a = (w, mu, var)``, each
    ``(B, C)``, and ``b``, each ``(M, C)`` (the same tensors when ``symmetric``); see :class:`TritonCrossLogK`."""
    return TritonCrossLogK.apply(*a, *b, n, symmetric, blocks)


__all__ = ["DEFAULT_BLOCKS", "INTERPRETED", "Blocks", "TritonCrossLogK", "cross_log_k"]
