"""The per-class terminal table never cuts or drops a class name, a number or a column, also when piped at 80
columns."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from probmcl_med.evaluation import multilabel_metrics
from probmcl_med.evaluation.render import PER_CLASS_COLUMNS, render_per_class_table
from probmcl_med.evaluation.statistics import add_statistics


def test_long_class_names_survive_an_80_column_pipe() -> None:
    rng = np.random.default_rng(0)
    names = [f"E.M.S.simple_squamous_epithelium_{i}" for i in range(4)]
    targets = (rng.random((50, 4)) < 0.4).astype(int)
    targets[0] = 1
    scores = rng.random((50, 4))
    metrics = add_statistics(multilabel_metrics(scores, targets, class_names=names), scores, targets, resamples=50)
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False, color_system=None)
    render_per_class_table(metrics, 0.8, console)
    text = buffer.getvalue()
    for column in PER_CLASS_COLUMNS[1:]:
        assert column in text, column
    lines = {line.split("│")[2].strip(): line for line in text.splitlines() if line.startswith("│")}
    for row in metrics["per_class"]:
        cells = [c.strip() for c in lines[row["name"]].split("│")[1:-1]]
        lo, hi = row["recall_ci"]
        assert cells[2] == f"{row['recall']:.1f} ({lo:.1f}–{hi:.1f})"
        assert cells[4] == f"{row['f1']:.1f}" and cells[8] == str(row["tp"]) and cells[9] == f"{row['ece']:.1f}"
    assert "…" not in text
