"""Figures a person reads: text large enough at the size the page shows it."""

from __future__ import annotations

import numpy as np
import pytest

from probmcl_med.evaluation import plots


def _shown_px(points: float, fig, dpi: float, page_px: float) -> float:
    """Height in screen pixels of text of ``points`` in ``fig`` saved at ``dpi`` and shown at most ``page_px``
    wide (the report's CSS scales a wider image down)."""
    width_px = fig.get_figwidth() * dpi
    return points * dpi / 72.0 * min(1.0, page_px / width_px)


@pytest.mark.parametrize("classes", [3, 11, 40])
def test_precision_recall_panel_titles_are_readable_on_the_report_page(classes: int) -> None:
    rng = np.random.default_rng(classes)
    targets = (rng.random((60, classes)) < 0.3).astype(float)
    targets[0] = 1
    scores = rng.random(targets.shape)
    fig = plots.precision_recall_figure(scores, targets, [f"class {i}" for i in range(classes)])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == classes
    for ax in axes:
        title = ax.title
        assert _shown_px(title.get_fontsize(), fig, plots.PR_DPI, plots.REPORT_WIDTH_PX) >= 12.0, title.get_text()
        for label in ax.get_xticklabels() + ax.get_yticklabels():
            if label.get_visible() and label.get_text():
                assert _shown_px(label.get_fontsize(), fig, plots.PR_DPI, plots.REPORT_WIDTH_PX) >= 10.0
