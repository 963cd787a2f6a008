"""Rendering an :class:`~probmcl_med.evaluation.result.EvaluationResult`: the cells every output shares, and the
terminal.

The per-class rows (:func:`per_class_rows`) and the tuned-against-0.5 rows (:func:`tradeoff_rows`) are the one
tabulation behind the terminal tables, ``report.md`` and ``report.html``. On the terminal (:func:`render_result`):
the verdict, the summary line of the paper's tables, the findings, then the per-class table sorted by recall,
classes under the recall floor in red and over-called ones in yellow (recall is what a pathologist reads first).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from probmcl_med.core.metrics import SUMMARY_KEYS, sorted_by_recall
from probmcl_med.evaluation.bootstrap import COUNT_OF
from probmcl_med.evaluation.findings import PRECISION_FLOOR, over_called
from probmcl_med.evaluation.thresholds import tradeoff_sentence

if TYPE_CHECKING:
    from probmcl_med.evaluation.result import EvaluationResult

PER_CLASS_COLUMNS = (
    "",
    "class",
    "recall % (95 % CI)",
    "precision % (95 % CI)",
    "F1 %",
    "AP % (95 % CI)",
    "present",
    "called",
    "TP",
    "ECE %",
    "threshold",
)
UNDER_FLOOR = "UNDER FLOOR"
OVER_CALLED = "OVER-CALLED"


def fmt(x: float | int | None) -> str:
    """A metric for display: one decimal for floats, ``n/a`` for an undefined value (a class without positives)."""
    return "n/a" if x is None else f"{x:.1f}" if isinstance(x, float) else str(x)


def fmt_ci(value: float | None, ci: list[float] | None) -> str:
    """``72.1 (60.3–83.0)``: a value and its interval; the value alone when there is no interval."""
    if value is None or ci is None:
        return fmt(value)
    return f"{value:.1f} ({ci[0]:.1f}–{ci[1]:.1f})"


def fmt_stat(row: dict[str, Any], key: str, method: dict[str, Any] | None) -> str:
    """A per-class ``recall``, ``precision`` or ``ap`` with its interval, or why it has none.

    ``72.1 (60.3–83.0)``; ``0.0 (n=3: too few for a CI)`` when the value rests on fewer images than the bootstrap's
    ``min_count`` (:data:`probmcl_med.evaluation.bootstrap.MIN_COUNT`); ``n/a`` when the value is undefined.
    """
    value, ci = row[key], row.get(f"{key}_ci")
    if value is None or ci is not None or not method:
        return fmt_ci(value, ci)
    count = int(row[COUNT_OF[key]])
    if count < int(method.get("min_count", 0)):
        return f"{value:.1f} (n={count}: too few for a CI)"
    return fmt(value)


def threshold_text(metrics: dict[str, Any]) -> str:
    """The threshold(s) and the rule, in words: ``0.5 for every class (score >= threshold)``."""
    thr = metrics["threshold"]
    which = f"per class, {min(thr):.4g} to {max(thr):.4g}" if isinstance(thr, list) else f"{thr:g} for every class"
    return f"{which} (positive when {metrics['threshold_rule']})"


def per_class_rows(
    metrics: dict[str, Any], recall_floor: float, precision_floor: float = PRECISION_FLOOR
) -> list[tuple[str, list[str]]]:
    """Per-class table rows sorted by recall ascending: (marks, cells in PER_CLASS_COLUMNS order).

    ``marks`` is ``""``, ``"floor"`` (recall under the floor), ``"over"`` (over-called) or ``"floor over"``; the
    first cell says the same in words, so the mark survives piping, printing and colour blindness. Intervals appear
    when the metrics carry them (:func:`probmcl_med.evaluation.bootstrap.bootstrap_intervals`).
    """
    over = set(over_called(metrics, precision_floor))
    method = metrics.get("bootstrap")
    rows = []
    for r in sorted_by_recall(metrics):
        under = r["recall"] is not None and r["recall"] < 100.0 * recall_floor
        marks = " ".join(m for m, on in (("floor", under), ("over", r["name"] in over)) if on)
        words = ", ".join(w for w, on in ((UNDER_FLOOR, under), (OVER_CALLED, r["name"] in over)) if on)
        cells = [
            words,
            r["name"],
            fmt_stat(r, "recall", method),
            fmt_stat(r, "precision", method),
            fmt(r["f1"]),
            fmt_stat(r, "ap", method),
            fmt(r["support"]),
            fmt(r["predicted"]),
            fmt(r["tp"]),
            fmt(r.get("ece")),
            f"{r['threshold']:.4g}",
        ]
        rows.append((marks, cells))
    return rows


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f}"


def tradeoff_rows(tradeoff: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the tuned thresholds against the baseline: per class, recall and precision at both and the
    change (tuned minus baseline, in points: + rises, - falls)."""
    b = tradeoff["baseline_threshold"]
    header = ["class", "threshold", f"recall @{b:g}", "recall tuned", "recall change",
              f"precision @{b:g}", "precision tuned", "precision change"]  # fmt: skip
    rows = [
        [r["name"], f"{r['threshold']:.4g}", fmt(r["recall_baseline"]), fmt(r["recall_tuned"]),
         _signed(r["recall_change"]), fmt(r["precision_baseline"]), fmt(r["precision_tuned"]),
         _signed(r["precision_change"])]
        for r in tradeoff["per_class"]
    ]  # fmt: skip
    return header, rows


def rich_text(line: str) -> str:
    """A findings line (markdown ``**bold**`` and ```code``` spans) as rich markup, everything else escaped."""
    text = escape(line)
    return re.sub(r"`([^`]+)`", r"[cyan]\1[/cyan]", re.sub(r"\*\*(.+?)\*\*", r"[bold]\1[/bold]", text))


PROBABILITY_KEYS = ("probabilities", "calibration", "ECE per class, raw -> calibrated")
"""The meta lines on the probabilities (raw or temperature-scaled) that the terminal prints under the thresholds."""


def render_result(result: EvaluationResult, console: Console) -> None:
    """Print an evaluation: the verdict, the thresholds, the summary (mAP with its interval), what is excluded,
    the findings, the per-class table, the tuned thresholds against 0.5 (when tuned) and the model cost."""
    metrics = result.metrics
    console.print(rich_text(result.verdict), highlight=False)
    console.print(f"thresholds: {result.operating_point.description}", highlight=False, soft_wrap=True, markup=False)
    for key in PROBABILITY_KEYS:
        if key in result.meta:
            console.print(f"{key}: {result.meta[key]}", highlight=False, soft_wrap=True, markup=False)
    table = Table(title=f"{metrics['num_samples']} samples, {metrics['num_classes']} classes (percent)")
    for key in SUMMARY_KEYS:
        table.add_column(key, justify="right")
    summary = metrics["summary"]
    table.add_row(*(fmt_ci(summary[k], summary.get(f"{k}_ci")) for k in SUMMARY_KEYS))
    console.print(table)
    console.print(f"threshold: {threshold_text(metrics)}", highlight=False)
    for item in metrics["excluded_from_map"]:
        console.print(f"[yellow]excluded from mAP/CP/CR:[/yellow] {item['name']}: {item['reason']}", highlight=False)
    for line in result.findings.lines:
        console.print(rich_text(line), highlight=False)
    render_per_class_table(metrics, result.recall_floor, console, result.precision_floor)
    if result.tradeoff is not None:
        b = result.tradeoff["baseline_threshold"]
        header, rows = tradeoff_rows(result.tradeoff)
        tradeoff = Table(title=f"Tuned thresholds against {b:g}: what changes (percent; change = tuned - {b:g})")
        for i, col in enumerate(header):
            tradeoff.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
        for row in rows:
            tradeoff.add_row(*(escape(c) for c in row))
        print_table(tradeoff, console)
        console.print(tradeoff_sentence(result.tradeoff), highlight=False, soft_wrap=True, markup=False)
    if result.cost is not None:
        console.print(f"model cost: {result.meta.get('model cost', result.cost.describe())}", highlight=False)


def render_per_class_table(
    metrics: dict[str, Any], recall_floor: float, console: Console, precision_floor: float = PRECISION_FLOOR
) -> None:
    """Print a per-class table sorted by recall ascending (worst first), rows under the recall floor in red and
    over-called rows in yellow.

    Args:
        metrics: the dict from :func:`.metrics.multilabel_metrics`.
        recall_floor: a fraction in [0, 1].
        console: where to print.
        precision_floor: a fraction; classes called with precision under it are over-called.
    """
    rows = per_class_rows(metrics, recall_floor, precision_floor)
    table = Table(title=f"Per class, lowest recall first (floor {100 * recall_floor:g} %)")
    for i, col in enumerate(PER_CLASS_COLUMNS):
        # Class names and numbers are never cut: a pathologist must read every name and every recall.
        longest = max((len(cells[i]) for _, cells in rows), default=0)
        table.add_column(col, justify="left" if i < 2 else "right", no_wrap=True, min_width=max(longest, len(col), 1))
    for marks, cells in rows:
        style = "bold red" if "floor" in marks else "yellow" if "over" in marks else None
        table.add_row(*(escape(c) for c in cells), style=style)
    print_table(table, console)


def print_table(table: Table, console: Console) -> None:
    """Print ``table`` at the terminal's width, or, when piped (a log, `make demo`), at its natural width instead of
    80 columns, so that no name or number is cut."""
    if console.is_terminal:
        console.print(table)
        return
    # print(width=) is capped at the console's width, so the console is widened for this one table
    natural = console.measure(table, options=console.options.update(max_width=100_000)).maximum
    width = console.width
    console.width = max(width, natural)
    try:
        console.print(table, crop=False)
    finally:
        console.width = width
