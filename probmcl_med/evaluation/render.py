"""Rich rendering of evaluation metrics for the terminal: the summary line of the paper's tables and a per-class
table sorted by recall, classes under the recall floor in red (recall is what a pathologist reads first)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from probmcl_med.core.metrics import SUMMARY_KEYS, below_recall_floor, sorted_by_recall

PER_CLASS_COLUMNS = ("", "class", "recall %", "precision %", "F1 %", "AP %", "support", "predicted", "TP", "threshold")
UNDER_FLOOR = "UNDER FLOOR"


def fmt(x: float | int | None) -> str:
    """A metric for display: one decimal for floats, ``n/a`` for an undefined value (a class without positives)."""
    return "n/a" if x is None else f"{x:.1f}" if isinstance(x, float) else str(x)


def threshold_text(metrics: dict[str, Any]) -> str:
    """The threshold(s) and the rule, in words: ``0.5 for every class (score >= threshold)``."""
    thr = metrics["threshold"]
    which = f"per class, {min(thr):.4g} to {max(thr):.4g}" if isinstance(thr, list) else f"{thr:g} for every class"
    return f"{which} (positive when {metrics['threshold_rule']})"


def per_class_rows(metrics: dict[str, Any], recall_floor: float) -> list[tuple[bool, list[str]]]:
    """Per-class table rows sorted by recall ascending: (under the floor?, cells in PER_CLASS_COLUMNS order).

    The one tabulation behind the terminal table, report.md and report.html. Under-floor rows carry a text marker
    in the first cell as well as colour, so the mark survives piping, printing and colour blindness.
    """
    under = set(below_recall_floor(metrics, recall_floor))
    rows = []
    for r in sorted_by_recall(metrics):
        flag = r["name"] in under
        cells = [UNDER_FLOOR if flag else "", r["name"]]
        cells += [fmt(r[k]) for k in ("recall", "precision", "f1", "ap", "support", "predicted", "tp")]
        rows.append((flag, [*cells, f"{r['threshold']:.4g}"]))
    return rows


def render_summary(metrics: dict[str, Any], recall_floor: float, console: Console) -> None:
    """Print mAP, CP, CR, CF1, OP, OR, OF1 (percent), the threshold, and which classes are under the recall floor.

    Args:
        metrics: the dict from :func:`.metrics.multilabel_metrics`.
        recall_floor: a fraction in [0, 1].
        console: where to print.
    """
    table = Table(title=f"{metrics['num_samples']} samples, {metrics['num_classes']} classes (percent)")
    for key in SUMMARY_KEYS:
        table.add_column(key, justify="right")
    table.add_row(*(fmt(metrics["summary"][k]) for k in SUMMARY_KEYS))
    console.print(table)
    console.print(f"threshold: {threshold_text(metrics)}", highlight=False)
    for item in metrics["excluded_from_map"]:
        console.print(f"[yellow]excluded from mAP/CP/CR:[/yellow] {item['name']}: {item['reason']}", highlight=False)
    under = below_recall_floor(metrics, recall_floor)
    if under:
        console.print(
            f"[bold red]{len(under)} class(es) under the recall floor of {100 * recall_floor:g} %:[/bold red] "
            + ", ".join(under),
            highlight=False,
        )
    else:
        console.print(f"[green]every class reaches the recall floor of {100 * recall_floor:g} %[/green]")


def render_per_class_table(metrics: dict[str, Any], recall_floor: float, console: Console) -> None:
    """Print a per-class table sorted by recall ascending (worst first), rows under the recall floor in red.

    Args:
        metrics: the dict from :func:`.metrics.multilabel_metrics`.
        recall_floor: a fraction in [0, 1].
        console: where to print.
    """
    rows = per_class_rows(metrics, recall_floor)
    table = Table(title=f"Per class, lowest recall first (floor {100 * recall_floor:g} %)")
    for i, col in enumerate(PER_CLASS_COLUMNS):
        # Class names and numbers are never cut: a pathologist must read every name and every recall.
        longest = max((len(cells[i]) for _, cells in rows), default=0)
        table.add_column(col, justify="left" if i < 2 else "right", no_wrap=True, min_width=max(longest, len(col), 1))
    for flag, cells in rows:
        table.add_row(*cells, style="bold red" if flag else None)
    # A terminal wraps at its width; piped output (a log, `make demo`) gets the table's natural width instead of 80.
    if console.is_terminal:
        console.print(table)
    else:
        console.print(table, width=max(console.width, console.measure(table).maximum), crop=False)
