"""The per-class terminal table never cuts a class name or a number, also when piped at 80 columns."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from probmcl_med.evaluation import multilabel_metrics
from probmcl_med.evaluation.render import render_per_class_table


def test_long_class_names_survive_an_80_column_pipe() -> None:
    rng = np.random.default_rng(0)
    names = [f"E.M.S.simple_squamous_epithelium_{i}" for i in range(4)]
    targets = (rng.random((50, 4)) < 0.4).astype(int)
    targets[0] = 1
    scores = rng.random((50, 4))
    metrics = multilabel_metrics(scores, targets, class_names=names)
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False, color_system=None)
    render_per_class_table(metrics, 0.8, console)
    text = buffer.getvalue()
    for row in metrics["per_class"]:
        assert row["name"] in text
        assert f"{row['recall']:.1f}" in text
    assert "…" not in text
