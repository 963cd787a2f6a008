"""A sweep's files and tables: ``runs.csv`` (one row per run), ``sweep.csv`` and ``sweep.md`` (one row per grid
point, mean +- std over seeds) and ``plot_<key>.png`` per swept key; the same table for the terminal.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from probmcl_med.fileio import atomic_write_bytes, atomic_write_text
from probmcl_med.sweep.grid import safe_name
from probmcl_med.sweep.results import METRICS, fmt


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: (" ".join(map(str, v)) if isinstance(v, list) else v) for c, v in row.items()})
    return buffer.getvalue()


def table_cells(row: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """One aggregated row as text: the swept values, ``n``, then ``mean ± std`` per metric."""
    cells = [str(row.get(k, "")) for k in keys] + [str(row["n"])]
    return cells + [f"{fmt(row[f'{m}_mean'])} ± {fmt(row[f'{m}_std'])}" for m in METRICS]


def markdown_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """``| key ... | n | mAP | CF1 | OF1 | mean recall |`` with ``mean +- std`` cells."""
    head = [*keys, "n", *METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(table_cells(row, keys)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> Any:
    """The aggregated table for the terminal."""
    table = Table(title="sweep: test split, mean ± std over seeds (percent)")
    for column in [*keys, "n", *METRICS]:
        table.add_column(column, justify="left" if column in keys else "right")
    for row in rows:
        table.add_row(*table_cells(row, keys))
    return table


def parameter_plot(rows: Sequence[dict[str, Any]], key: str, keys: Sequence[str], metric: str = "mAP") -> bytes:
    """PNG: ``metric`` mean +- std against the values of ``key`` (categorical axis, first-seen order), one line per
    combination of the other swept keys."""
    values = list(dict.fromkeys(str(r.get(key, "")) for r in rows))
    others = [k for k in keys if k != key]
    lines: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        label = ", ".join(f"{k}={row.get(k, '')}" for k in others) or metric
        lines.setdefault(label, {})[str(row.get(key, ""))] = row
    fig = Figure(figsize=(max(4.0, 1.2 * len(values) + 2), 3.6))
    ax = fig.add_subplot()
    for label, by_value in lines.items():
        xs = [i for i, v in enumerate(values) if v in by_value]
        means = [by_value[values[i]][f"{metric}_mean"] for i in xs]
        stds = [np.nan_to_num(by_value[values[i]][f"{metric}_std"]) for i in xs]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(key)
    ax.set_ylabel(f"test {metric} (%)")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_outputs(
    out: Path,
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    keys: Sequence[str],
    plots: bool = True,
) -> list[Path]:
    """``runs.csv``, ``sweep.csv``, ``sweep.md`` and ``plot_<key>.png`` per swept key, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    flat = [{**r["overrides"], **{k: v for k, v in r.items() if k != "overrides"}} for r in records]
    run_columns = ["run", "point", *keys, "seed", *METRICS, "train_seconds"]
    point_columns = ["point", *keys, "n", "seeds", *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))]
    files = [
        atomic_write_text(out / "runs.csv", _csv_text(flat, run_columns)),
        atomic_write_text(out / "sweep.csv", _csv_text(rows, point_columns)),
        atomic_write_text(out / "sweep.md", markdown_table(rows, keys)),
    ]
    if plots:
        for key in keys:
            files.append(atomic_write_bytes(out / f"plot_{safe_name(key)}.png", parameter_plot(rows, key, keys)))
    return [Path(f) for f in files]
