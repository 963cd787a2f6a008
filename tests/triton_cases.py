"""Cases of the Triton kernel tests: their inputs and how to evaluate them with either backend (not a test module).

Triton decides between its interpreter and the GPU compiler when ``triton`` is first imported (``TRITON_INTERPRET``
is read then, and the ``tl.sum``/``tl.zeros`` helpers are built), so the interpreter cannot be switched on inside the
test process. Run as a script, this file sets ``TRITON_INTERPRET=1`` before anything imports triton, evaluates every
case with the ``triton`` backend on CPU tensors and saves ``{name: (value, grads, seconds)}`` with ``torch.save``;
tests/test_triton_correlation.py runs it in a subprocess and compares with the torch backend and the dense reference,
built here from the same seeds.

    python tests/triton_cases.py OUT.pt [--slow]      # the fast cases, or only the slow ones
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # before torch or probmcl_med can import triton

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from mixture_reference import extreme_mixture

from probmcl_med.core.mixture import GaussianMixture


@dataclass(frozen=True)
class Case:
    """One comparison of the triton backend with a reference.

    Attributes:
        name: test id.
        kind: ``kernel`` (the raw ``log K`` kernel on ``(w, mu, var)`` leaves, against ``_CrossLogK``),
            ``similarity`` (``correlation_similarity`` on mixtures made from ``(logits, means, variances)`` leaves)
            or ``log_similarity`` (``log_correlation_similarity``).
        rows_a: rows of ``a``; rows_b: rows of ``b`` (ignored when ``shape`` is ``symmetric``).
        comps: components C; dim: the dimension n; dtype: the leaves' dtype.
        shape: ``symmetric`` (``b is a``), ``rectangle`` (independent ``b``) or ``ddp`` (``a`` = a copy of rows
            ``[4, 4 + rows_a)`` of ``b``, like one rank's local views against the gathered batch).
        inputs: ``random`` (moderate values), ``extreme`` (``mixture_reference.extreme_mixture``) or ``var=LO:HI``
            (variances uniform in ``[LO, HI]``, means of scale 0.005: the large-dimension accuracy cases).
        blocks: ``(rows, components)`` of the triton launch, or ``None`` for the kernel's defaults.
        seed: seeds the inputs and the upstream gradient.
        slow: only with ``--slow`` (the ``slow`` marker).
    """

    name: str
    kind: str
    rows_a: int
    rows_b: int
    comps: int
    dim: int
    dtype: torch.dtype
    shape: str
    inputs: str = "random"
    blocks: tuple[int, int] | None = (4, 4)
    seed: int = 0
    slow: bool = False

    @property
    def symmetric(self) -> bool:
        return self.shape == "symmetric"

    def leaves(self) -> tuple[list[Tensor], list[Tensor]]:
        """Fresh leaves of ``a`` and ``b`` (the same list when symmetric), requiring grad."""
        g = torch.Generator().manual_seed(self.seed)
        if self.inputs == "extreme":
            params, _ = extreme_mixture(self.rows_a, self.comps, self.dim, self.dtype, seed=self.seed)
            return params, params

        def draw(rows: int) -> list[Tensor]:
            mean_scale, lo, hi = 0.4, 1.0, 4.0
            if self.inputs.startswith("var="):
                mean_scale = 0.005
                lo, hi = (float(x) for x in self.inputs[4:].split(":"))
            elif self.dim >= 1024:
                mean_scale = 0.02  # informative similarities at large n
            first = torch.randn(rows, self.comps, generator=g, dtype=torch.float64)
            first = first - 1 if self.kind == "kernel" else 2 * first
            means = mean_scale * torch.randn(rows, self.comps, generator=g, dtype=torch.float64)
            variances = lo + (hi - lo) * torch.rand(rows, self.comps, generator=g, dtype=torch.float64)
            return [t.to(self.dtype).requires_grad_() for t in (first, means, variances)]

        if self.shape == "symmetric":
            a = draw(self.rows_a)
            return a, a
        b = draw(self.rows_b)
        if self.shape == "ddp":
            return [t.detach()[4 : 4 + self.rows_a].clone().requires_grad_() for t in b], b
        return draw(self.rows_a), b

    def mixture(self, params: list[Tensor]) -> GaussianMixture:
        if self.inputs == "extreme":  # as extreme_mixture builds it: softmax in float32, weights in the leaves' dtype
            return GaussianMixture(torch.softmax(params[0].float(), 1).to(self.dtype), params[1], params[2], self.dim)
        logw = torch.log_softmax(params[0], 1)
        return GaussianMixture(logw.exp(), params[1], params[2], self.dim, logw)

    def evaluate(self, backend: str) -> tuple[Tensor, list[Tensor]]:
        """The case's output with ``backend`` (``triton``, ``torch`` or ``dense``) and the gradient of
        ``sum(out * R)`` (``R`` fixed random) w.r.t. every leaf of ``a`` then of ``b``."""
        a_params, b_params = self.leaves()
        params = a_params if self.symmetric else a_params + b_params
        if self.kind == "kernel":
            out = self._kernel(backend, a_params, b_params)
        else:
            a = self.mixture(a_params)
            b = a if self.symmetric else self.mixture(b_params)
            out = self._similarity(backend, a, b)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(self.seed + 1), dtype=torch.float64)
        grads = torch.autograd.grad((out * upstream.to(out.dtype)).sum(), params)
        return out.detach(), list(grads)

    def _kernel(self, backend: str, a: list[Tensor], b: list[Tensor]) -> Tensor:
        if backend == "triton":
            from probmcl_med.core.triton_correlation import Blocks, cross_log_k

            blocks = Blocks(*self.blocks) if self.blocks else None
            return cross_log_k(tuple(a), tuple(b), self.dim, self.symmetric, blocks)  # type: ignore[arg-type]
        from probmcl_med.core.similarities import _CrossLogK

        return _CrossLogK.apply(*a, *b, self.dim, 3, self.symmetric)

    def _similarity(self, backend: str, a: GaussianMixture, b: GaussianMixture) -> Tensor:
        from probmcl_med.core.similarities import correlation_similarity, log_correlation_similarity

        if backend == "dense":
            from mixture_reference import dense_correlation

            sim = dense_correlation(a, b)
            return sim.log() if self.kind == "log_similarity" else sim
        if backend == "triton" and self.blocks:
            import probmcl_med.core.triton_correlation as tc

            tc.DEFAULT_BLOCKS = tc.Blocks(*self.blocks)
        fn = log_correlation_similarity if self.kind == "log_similarity" else correlation_similarity
        try:
            return fn(a, b, backend=backend)
        finally:
            if backend == "triton" and self.blocks:
                tc.DEFAULT_BLOCKS = tc.Blocks()


f64, f32, bf16 = torch.float64, torch.float32, torch.bfloat16
CASES = {
    c.name: c
    for c in [
        # the kernel alone in float64: 7 x 6 rows in tiles of 4 (partial tiles), 3 or 9 components in chunks of 4
        *(
            Case(f"kernel-f64-{shape}-C{comps}", "kernel", 7, 6, comps, 5, f64, shape, seed=comps)
            for comps in (3, 9)
            for shape in ("symmetric", "rectangle")
        ),
        # the similarity end to end in float64, against the dense reference
        *(Case(f"similarity-f64-{shape}", "similarity", 6, 9, 5, 16, f64, shape, seed=1) for shape in ("symmetric", "rectangle")),
        # one DDP rank: 3 local views against all 10 gathered views (C = 9, n = 256), float32
        Case("ddp-rectangle-f32", "similarity", 3, 10, 9, 256, f32, "ddp", seed=4),
        # C = 80 (MS-COCO) at n = 2048 with the default launch: 5 chunks of 16 components, one partial tile
        Case("c80-symmetric-f32", "log_similarity", 5, 5, 80, 2048, f32, "symmetric", blocks=None, seed=6),
        # stress inputs (means to 1e3, variances 1 .. 1e4, weights to exp(-80) and below), float32 and bfloat16 leaves
        *(
            Case(f"extreme-{str(dt)[6:]}-n{dim}", "similarity", 6, 6, 5, dim, dt, "symmetric", inputs="extreme", seed=9)
            for dim in (1, 4096)
            for dt in (f32, bf16)
        ),
        # float32 at n = 4096 against float64: nearly equal, large and spread variances
        *(
            Case(f"accuracy-n4096-var{lo}-{hi}", "similarity", 5, 5, 4, 4096, f32, "symmetric", inputs=f"var={lo}:{hi}", seed=11)
            for lo, hi in ((1.0, 1.05), (9000.0, 10000.0), (1.0, 1e4))
        ),
        # issue 25: the log form with sharp components (variances 0.01-0.05, below the paper's floor of 1), float64
        *(
            Case(f"sharp-log-f64-{shape}", "log_similarity", 6, 5, 4, dim, f64, shape, inputs="var=0.01:0.05", seed=14)
            for shape, dim in (("symmetric", 8), ("rectangle", 64))
        ),
        # the paper's C with a batch spanning 3 x 3 tiles of 16 rows: 6 programs of 5 chunks x 80 components
        Case("paper-C80-2N48-f32", "log_similarity", 48, 48, 80, 2048, f32, "symmetric", blocks=None, seed=12, slow=True),
        # one DDP rank's 20 views against 48 at C = 80: 2 x 3 tiles
        Case("paper-C80-ddp-20x48-f32", "log_similarity", 20, 48, 80, 2048, f32, "ddp", blocks=None, seed=13, slow=True),
    ]
}  # fmt: skip


def main() -> None:
    out, slow = sys.argv[1], "--slow" in sys.argv[2:]
    import probmcl_med.core.triton_correlation as tc

    assert tc.INTERPRETED, "TRITON_INTERPRET=1 did not take effect"
    results = {}
    for name, case in CASES.items():
        if case.slow != slow:
            continue
        start = time.perf_counter()
        value, grads = case.evaluate("triton")
        results[name] = (value, grads, time.perf_counter() - start)
        print(f"{name}: {results[name][2]:.2f} s", file=sys.stderr)
    tmp = out + ".tmp"
    torch.save(results, tmp)
    os.replace(tmp, out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
