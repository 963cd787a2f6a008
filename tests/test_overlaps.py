"""Label overlaps against explicit set and vector formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probmcl_med.core.overlaps import cosine, jaccard
from probmcl_med.registry import OVERLAPS


def random_labels(rows: int, classes: int, seed: int, empty_rows: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(rows, classes, generator=g) < 0.35).float()
    for r in empty_rows:
        y[r] = 0
    return y


def test_registered() -> None:
    assert OVERLAPS.get("jaccard") is jaccard and OVERLAPS.get("cosine") is cosine


def test_jaccard_matches_set_formula() -> None:
    ya, yb = random_labels(9, 7, 0, empty_rows=(0, 3)), random_labels(6, 7, 1, empty_rows=(2,))
    got = jaccard(ya, yb)
    for i in range(9):
        for j in range(6):
            sa = {c for c in range(7) if ya[i, c]}
            sb = {c for c in range(7) if yb[j, c]}
            expected = len(sa & sb) / len(sa | sb) if sa | sb else 0.0
            assert got[i, j].item() == pytest.approx(expected, abs=1e-7)


def test_cosine_matches_vector_formula() -> None:
    ya, yb = random_labels(9, 7, 2, empty_rows=(1,)), random_labels(6, 7, 3, empty_rows=(4,))
    got = cosine(ya, yb)
    for i in range(9):
        for j in range(6):
            a, b = ya[i].numpy().astype(float), yb[j].numpy().astype(float)
            den = math.sqrt(a.sum()) * math.sqrt(b.sum())  # ||y|| = sqrt(|y|) for multi-hot
            expected = float(a @ b) / den if den else 0.0
            assert got[i, j].item() == pytest.approx(expected, abs=1e-7)


def test_cosine_is_not_the_papers_typo() -> None:
    y = torch.tensor([[1.0, 1.0, 0.0]])
    assert cosine(y, y).item() == pytest.approx(1.0)  # the squared-norm typo would give 0.5


def test_soft_labels() -> None:
    g = torch.Generator().manual_seed(4)
    ya, yb = torch.rand(5, 6, generator=g), torch.rand(4, 6, generator=g)
    ya[0] = 0
    jac, cos = jaccard(ya, yb), cosine(ya, yb)
    for i in range(5):
        for j in range(4):
            a, b = ya[i].double().numpy(), yb[j].double().numpy()
            mx = np.maximum(a, b).sum()
            assert jac[i, j].item() == pytest.approx(np.minimum(a, b).sum() / mx if mx else 0.0, abs=1e-6)
            den = np.linalg.norm(a) * np.linalg.norm(b)
            assert cos[i, j].item() == pytest.approx(a @ b / den if den else 0.0, abs=1e-6)


@pytest.mark.parametrize("fn", [jaccard, cosine])
def test_empty_sets_range_and_identity(fn) -> None:  # type: ignore[no-untyped-def]
    y = random_labels(8, 5, 5, empty_rows=(0, 1))
    d = fn(y, y)
    assert d.shape == (8, 8)
    assert torch.all(d[0] == 0) and torch.all(d[:, 1] == 0)  # empty with anything, empty with empty: 0
    assert ((d >= 0) & (d <= 1)).all()
    nonempty = y.sum(1) > 0
    assert torch.allclose(d.diagonal()[nonempty], torch.ones(int(nonempty.sum())))
    assert torch.allclose(d, d.T)


@pytest.mark.parametrize("fn", [jaccard, cosine])
def test_shape_errors_and_dtype(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        fn(torch.ones(2, 3), torch.ones(2, 4))
    assert fn(torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(1, 3, dtype=torch.uint8)).dtype == torch.float32
    assert fn(torch.ones(0, 3), torch.ones(2, 3)).shape == (0, 2)


@pytest.mark.parametrize("fn", [jaccard, cosine])
def test_identical_sets_score_exactly_one(fn) -> None:  # type: ignore[no-untyped-def]
    # alpha = 1 must keep the other view of the same image: D has to be exactly 1, not 0.9999999999999998
    for dtype in (torch.float32, torch.float64):
        y = torch.tril(torch.ones(80, 80, dtype=dtype))  # label sets of every size 1..80
        assert torch.all(fn(y, y).diagonal() == 1.0)
