"""The fused Triton correlation kernel, run on the CPU by Triton's interpreter, against the torch backend and the
dense reference: values and gradients (w.r.t. weights, means and variances of both mixtures), the symmetric and the
rectangular (DDP ``b x G``) shapes, partial tiles and component chunks, C not a power of 2, extreme inputs.

The triton side of every case runs in one subprocess (tests/triton_cases.py, which sets ``TRITON_INTERPRET=1``
before triton is imported); the references run here, in this process, where triton is never switched to the
interpreter, so the rest of the suite is unaffected. The interpreter is slow (about a millisecond per block
operation): shapes are small (the subprocess takes about 15 s of CPU in all), the larger cases are ``slow``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from probmcl_med.core.similarities import correlation_similarity, resolve_backend

sys.path.insert(0, str(Path(__file__).parent))
from mixture_reference import extreme_mixture
from triton_cases import CASES, Case

pytest.importorskip("triton")

Result = tuple[torch.Tensor, list[torch.Tensor], float]


def run_interpreter(tmp_path: Path, slow: bool) -> dict[str, Result]:
    out = tmp_path / "triton.pt"
    cmd = [sys.executable, str(Path(__file__).parent / "triton_cases.py"), str(out), *(["--slow"] if slow else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    """``{case name: (value, grads, seconds)}`` of the triton backend on every fast case, under the interpreter."""
    return run_interpreter(tmp_path_factory.mktemp("triton"), slow=False)


def cases(prefix: str) -> list[Any]:
    return [pytest.param(c, id=c.name) for c in CASES.values() if c.name.startswith(prefix) and not c.slow]


def assert_matches(
    result: Result, case: Case, reference: str, value_tol: tuple[float, float], grad_rtol: float
) -> None:
    """Value within ``(rtol, atol)``; gradients within ``grad_rtol`` relative to each gradient's largest entry."""
    got, grads, _ = result
    ref, ref_grads = case.evaluate(reference)
    torch.testing.assert_close(got, ref.to(got.dtype), rtol=value_tol[0], atol=value_tol[1])
    for name, x, y in zip(("a.w", "a.mu", "a.var", "b.w", "b.mu", "b.var"), grads, ref_grads, strict=False):
        scale = float(y.double().abs().max())
        torch.testing.assert_close(
            x.double(), y.double(), rtol=grad_rtol, atol=grad_rtol * scale + 1e-300, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("case", cases("kernel-"))
def test_kernel_equals_torch_kernel_float64(triton_results: dict[str, Result], case: Case) -> None:
    # 7 x 6 rows in tiles of 4 (partial tiles), 3 or 9 components in chunks of 4 (a partial chunk)
    assert_matches(triton_results[case.name], case, "torch", (1e-13, 1e-13), 1e-12)


@pytest.mark.parametrize("case", cases("similarity-"))
def test_similarity_float64_equals_dense_reference(triton_results: dict[str, Result], case: Case) -> None:
    assert triton_results[case.name][0].min() < 0.9  # informative values
    assert_matches(triton_results[case.name], case, "dense", (1e-12, 1e-13), 1e-10)


@pytest.mark.parametrize("case", cases("ddp-"))
def test_ddp_rectangle_float32_equals_torch_backend(triton_results: dict[str, Result], case: Case) -> None:
    got = triton_results[case.name][0]
    assert got.shape == (3, 10)
    torch.testing.assert_close(got[:, 4:7].diagonal(), torch.ones(3), rtol=0, atol=2e-6)  # the local views
    assert_matches(triton_results[case.name], case, "torch", (1e-5, 1e-6), 1e-4)


@pytest.mark.parametrize("case", cases("c80-"))
def test_eighty_components_default_launch(triton_results: dict[str, Result], case: Case) -> None:
    assert triton_results[case.name][0].min() < -0.1  # informative log-similarities
    assert_matches(triton_results[case.name], case, "torch", (1e-4, 1e-5), 1e-4)


@pytest.mark.parametrize("case", cases("extreme-"))
def test_no_nan_for_extreme_inputs(triton_results: dict[str, Result], case: Case) -> None:
    got, grads, _ = triton_results[case.name]
    assert got.dtype == torch.float32
    assert torch.isfinite(got).all() and (got >= 0).all() and (got <= 1).all()
    assert all(torch.isfinite(g).all() for g in grads)
    assert_matches(triton_results[case.name], case, "torch", (1e-4, 1e-6), 1e-3)


@pytest.mark.parametrize("case", cases("accuracy-"))
def test_float32_accurate_at_large_dim(triton_results: dict[str, Result], case: Case) -> None:
    # docs/math.md s.4: a plain float32 log K loses 1e-4 .. 1e-3 at n = 4096; float32 against float64 here
    got = triton_results[case.name][0].double()
    a_params, _ = case.leaves()
    a64 = case.mixture([p.detach().double() for p in a_params])
    from mixture_reference import dense_correlation

    ref = dense_correlation(a64, a64)
    assert ref.min() < 0.9  # informative values, not only ones
    assert (got - ref).abs().max().item() < 5e-6


@pytest.mark.parametrize("case", cases("sharp-"))
def test_log_form_of_sharp_components_equals_dense_reference(triton_results: dict[str, Result], case: Case) -> None:
    """Issue 25's log form (``contrastive.similarity_form: log``) and a variance floor below 1 on the fused kernel."""
    assert_matches(triton_results[case.name], case, "dense", (1e-10, 1e-10), 1e-8)
    assert triton_results[case.name][0].min() < -0.3  # informative: far from a similarity of 1


def test_every_fast_case_ran(triton_results: dict[str, Result]) -> None:
    assert set(triton_results) == {name for name, c in CASES.items() if not c.slow}


@pytest.mark.slow
def test_paper_components_larger_batches(tmp_path: Path) -> None:
    results = run_interpreter(tmp_path, slow=True)
    assert set(results) == {name for name, c in CASES.items() if c.slow}
    for name in results:
        assert_matches(results[name], CASES[name], "torch", (1e-4, 1e-5), 1e-4)


# ------------------------------------------------------------------------------------ in this process, no interpreter
def test_compiled_kernel_refuses_cpu_tensors() -> None:
    from probmcl_med.core import triton_correlation as tc

    assert not tc.INTERPRETED
    x = torch.ones(2, 3)
    with pytest.raises(RuntimeError, match=r"CUDA tensors.*backend='torch'"):
        tc.cross_log_k((x, x, x), (x, x, x), 4, True)


def test_auto_backend_is_torch_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    with pytest.raises(ValueError, match="one of auto, torch, triton, got 'cuda'"):
        resolve_backend("cuda", torch.device("cpu"))
    # a CPU call with the default backend never reaches the Triton module
    monkeypatch.setitem(sys.modules, "probmcl_med.core.triton_correlation", None)  # importing it now raises
    _, a = extreme_mixture(5, 3, 8, torch.float32, seed=0)
    assert correlation_similarity(a, a).shape == (5, 5)
    with pytest.raises(ImportError):
        correlation_similarity(a, a, backend="triton")
