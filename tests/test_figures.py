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


def _rows(key: str, values: list[str], means: list[float], std: float = 0.2, n: int = 3) -> list[dict]:
    return [
        {key: v, "n": n, "mAP_mean": m, "mAP_std": std if n > 1 else float("nan")}
        for v, m in zip(values, means, strict=True)
    ]


def test_sweep_plot_draws_points_with_error_bars_not_lines_on_a_meaningful_axis() -> None:
    """The issue's plot: three modes within 0.7 mAP joined by lines on a 0.7-point axis."""
    rows = _rows("mode", ["two-stage", "asl", "joint"], [71.2, 71.9, 71.5])
    fig = plots.sweep_figure(rows, "mode", ["mode"])
    ax = fig.axes[0]
    for line in ax.get_lines():
        assert line.get_linestyle() in ("None", "none", "") or len(line.get_xdata()) <= 2  # markers, caps, bars
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [0, 1, 2]  # categorical slots, first-seen order
    assert [t.get_text() for t in ax.get_xticklabels()] == ["two-stage", "asl", "joint"]
    lo, hi = ax.get_ylim()
    assert hi - lo >= plots.MIN_SPAN and lo <= 71.2 - 0.2 and hi >= 71.9 + 0.2
    assert "sample std over seeds" in ax.get_title()


def test_sweep_plot_puts_numbers_on_a_numeric_axis_log_when_they_span_decades() -> None:
    rows = _rows("contrastive.tau", ["0.05", "0.1", "0.5"], [60.0, 64.0, 58.0], n=1)
    ax = plots.sweep_figure(rows, "contrastive.tau", ["contrastive.tau"]).axes[0]
    assert ax.get_xscale() == "log"
    [points] = [line for line in ax.get_lines() if line.get_marker() == "o"]
    np.testing.assert_allclose(np.asarray(points.get_xdata(), float), [0.05, 0.1, 0.5])
    assert "one seed: no error bars" in ax.get_title()
    rows = _rows("epochs", ["10", "20", "40"], [50.0, 55.0, 57.0]) + [
        {**r, "lr": "x"} for r in _rows("epochs", ["10", "20"], [51.0, 52.0])
    ]
    ax = plots.sweep_figure(rows, "epochs", ["epochs", "lr"]).axes[0]
    assert ax.get_xscale() == "linear"
    series = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(series) == 2 and all(np.all(np.diff(np.asarray(s.get_xdata(), float)) > 0) for s in series)
    assert not np.allclose(
        np.asarray(series[0].get_xdata(), float)[:2], np.asarray(series[1].get_xdata(), float)
    )  # side by side, not on top
