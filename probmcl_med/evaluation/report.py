"""The evaluation report folder: numbers, scores, plots, and a report a pathologist reads recall-first.

``write_report`` writes, into one folder::

    metrics.json            the metrics dict, plus meta, recall_floor and below_recall_floor
    per_class.csv           one row per class, in class order
    scores.npz              scores (N, C), targets (N, C), class_names (C,): enough to recompute everything
    recall_precision.png    per-class recall and precision bars, classes under the recall floor in red
    precision_recall.png    a precision-recall panel per class
    cooccurrence.png        label co-occurrence, ground truth vs predicted
    report.md               the report, images by relative path
    report.html             the same report, self-contained: the images embedded as base64 data URIs
    .probmcl-med-report     a marker: this folder may be replaced by the next report written to the same path

The folder is written whole or not at all: it is built under a temporary sibling name and renamed into place
(:func:`probmcl_med.fileio.atomic_directory`), so a failure (a plot that raises, a full disk) leaves the previous
report, or nothing, never a half-written folder. An existing folder is replaced only if it is empty or is a report
(has the marker): pointing ``--report`` at a folder of other files is an error, not a deletion.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.core.metrics import SUMMARY_KEYS, as_numpy, below_recall_floor, check_recall_floor
from probmcl_med.evaluation import plots
from probmcl_med.evaluation.render import PER_CLASS_COLUMNS, fmt, per_class_rows, threshold_text
from probmcl_med.fileio import atomic_directory, check_replaceable_folder

MARKER = ".probmcl-med-report"
CSV_FIELDS = ("name", "ap", "precision", "recall", "f1", "support", "predicted", "tp", "threshold", "below_floor")
HEADER_KEYS = ("checkpoint", "dataset", "split", "date")
FIGURES = (
    ("recall_precision.png", "Recall and precision per class"),
    ("precision_recall.png", "Precision-recall curves"),
    ("cooccurrence.png", "Label co-occurrence: ground truth vs predicted"),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(2){text-align:left}tr.floor td{color:#c62828;font-weight:600}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.note{color:#555}
"""


def _header_items(metrics: dict[str, Any], meta: dict[str, Any], recall_floor: float) -> list[tuple[str, str]]:
    """The report's header lines, in order: checkpoint, dataset, split, date, any other meta, then the settings."""
    items = [(key, str(meta[key]) if meta.get(key) not in (None, "") else "not given") for key in HEADER_KEYS]
    items += [(str(k), str(v)) for k, v in meta.items() if k not in HEADER_KEYS]
    items += [
        ("threshold", threshold_text(metrics)),
        ("recall floor", f"{100 * recall_floor:g} %"),
        ("samples", str(metrics["num_samples"])),
        ("classes", f"{metrics['num_classes']} ({metrics['num_evaluated_classes']} with a positive)"),
    ]
    return items


def _markdown(metrics: dict[str, Any], meta: dict[str, Any], recall_floor: float) -> str:
    lines = ["# ProbMCL evaluation report", ""]
    lines += [f"- **{k}**: {v}" for k, v in _header_items(metrics, meta, recall_floor)]
    lines += ["", "## Summary (percent)", "", "| " + " | ".join(SUMMARY_KEYS) + " |", "|" + "---|" * len(SUMMARY_KEYS)]
    lines.append("| " + " | ".join(fmt(metrics["summary"][k]) for k in SUMMARY_KEYS) + " |")
    lines += ["", _floor_sentence(metrics, recall_floor)]
    for item in metrics["excluded_from_map"]:
        lines.append(f"- excluded from mAP, CP, CR: **{item['name']}**: {item['reason']}")
    lines += ["", "## Per class, lowest recall first", ""]
    lines += ["| " + " | ".join(PER_CLASS_COLUMNS) + " |", "|" + "---|" * len(PER_CLASS_COLUMNS)]
    for flag, cells in per_class_rows(metrics, recall_floor):
        cells = [c.replace("|", "\\|") for c in cells]  # a "|" in a class name would split the cell
        cells = [f"**{c}**" if flag and c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for filename, title in FIGURES:
        lines += [f"## {title}", "", f"![{title}]({filename})", ""]
    return "\n".join(lines)


def _floor_sentence(metrics: dict[str, Any], recall_floor: float) -> str:
    under = below_recall_floor(metrics, recall_floor)
    if not under:
        return f"Every class with a positive reaches the recall floor of {100 * recall_floor:g} %."
    return f"{len(under)} class(es) under the recall floor of {100 * recall_floor:g} %: " + ", ".join(under) + "."


def _html(metrics: dict[str, Any], meta: dict[str, Any], recall_floor: float, images: dict[str, bytes]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>ProbMCL evaluation report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>ProbMCL evaluation report</h1><table>",
    ]
    out += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _header_items(metrics, meta, recall_floor)]
    out.append("</table><h2>Summary (percent)</h2><table><tr>")
    out += [f"<th>{k}</th>" for k in SUMMARY_KEYS]
    out.append("</tr><tr>")
    out += [f"<td>{fmt(metrics['summary'][k])}</td>" for k in SUMMARY_KEYS]
    out.append(f"</tr></table><p>{e(_floor_sentence(metrics, recall_floor))}</p>")
    if metrics["excluded_from_map"]:
        out.append('<ul class="note">')
        out += [
            f"<li>excluded from mAP, CP, CR: <b>{e(i['name'])}</b>: {e(i['reason'])}</li>"
            for i in metrics["excluded_from_map"]
        ]
        out.append("</ul>")
    out.append("<h2>Per class, lowest recall first</h2><table><tr>")
    out += [f"<th>{e(c)}</th>" for c in PER_CLASS_COLUMNS]
    out.append("</tr>")
    for flag, cells in per_class_rows(metrics, recall_floor):
        out.append('<tr class="floor">' if flag else "<tr>")
        out += [f"<td>{e(c)}</td>" for c in cells]
        out.append("</tr>")
    out.append("</table>")
    for filename, title in FIGURES:
        data = base64.b64encode(images[filename]).decode("ascii")
        out.append(f"<h2>{e(title)}</h2>")
        out.append(f'<img alt="{e(title)}" src="data:image/png;base64,{data}">')
        out.append(f'<p class="note">Also saved as <a href="{e(filename)}">{e(filename)}</a>.</p>')
    out.append("</body></html>")
    return "\n".join(out)


def _per_class_csv(metrics: dict[str, Any], recall_floor: float) -> str:
    under = set(below_recall_floor(metrics, recall_floor))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in metrics["per_class"]:
        row = {k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS[:-1]}
        writer.writerow({**row, "below_floor": int(r["name"] in under)})
    return buf.getvalue()


def write_report(
    out_dir: str | Path,
    metrics: dict[str, Any],
    scores: Any,
    targets: Any,
    class_names: Sequence[str],
    meta: dict[str, Any] | None = None,
    recall_floor: float = 0.8,
) -> Path:
    """Write the report folder (see the module docstring) atomically, replacing an earlier report at ``out_dir``.

    Args:
        out_dir: the folder to create (or replace, if it is an earlier report).
        metrics: the dict from :func:`.metrics.multilabel_metrics` for these scores and targets.
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        class_names: C names.
        meta: what the report states at the top: ``checkpoint``, ``dataset``, ``split``, ``date`` (ISO time of now,
            UTC, when absent), and any other keys (shown after them). Values are shown with ``str``.
        recall_floor: a fraction in [0, 1]; classes with recall under it are marked in the table and plots.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        DataError: ``out_dir`` is a file or a non-empty folder that is not a report, or ``recall_floor`` is not a
            fraction.
    """
    out_dir = Path(out_dir)
    check_recall_floor(recall_floor)
    check_replaceable_folder(out_dir, MARKER, "report", "--report")
    s, t = as_numpy(scores), as_numpy(targets)
    names = [str(n) for n in class_names]
    meta = dict(meta or {})
    meta.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    thresholds = np.array([r["threshold"] for r in metrics["per_class"]])

    images = {
        "recall_precision.png": plots.recall_precision_bars(metrics, recall_floor),
        "precision_recall.png": plots.precision_recall_grid(s, t, names, metrics),
        "cooccurrence.png": plots.cooccurrence_heatmaps(t, s >= thresholds[None, :], names),
    }
    document = {
        **metrics,
        "meta": meta,
        "recall_floor": recall_floor,
        "below_recall_floor": below_recall_floor(metrics, recall_floor),
    }
    with atomic_directory(out_dir) as tmp:
        (tmp / "metrics.json").write_text(
            json.dumps(document, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8"
        )
        (tmp / "per_class.csv").write_text(_per_class_csv(metrics, recall_floor), encoding="utf-8")
        np.savez_compressed(tmp / "scores.npz", scores=s, targets=t, class_names=np.array(names, dtype=str))
        for filename, data in images.items():
            (tmp / filename).write_bytes(data)
        (tmp / "report.md").write_text(_markdown(metrics, meta, recall_floor), encoding="utf-8")
        (tmp / "report.html").write_text(_html(metrics, meta, recall_floor, images), encoding="utf-8")
        (tmp / MARKER).write_text("written by probmcl_med.evaluation.write_report\n", encoding="utf-8")
    return out_dir
