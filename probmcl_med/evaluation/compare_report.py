"""The comparison folder: ``compare.html`` (self-contained), ``compare.md``, ``compare.json`` and one forest plot
per compared model (``delta_ap_<n>.png``: each class's AP difference with its 95 % interval).

Written whole or not at all, like the report (:func:`probmcl_med.fileio.atomic_directory`); an existing folder is
replaced only when it is empty or holds nothing but an earlier comparison (the files its manifest :data:`MARKER` lists).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure as MplFigure

from probmcl_med.core.metrics import SUMMARY_KEYS
from probmcl_med.evaluation.compare import Comparison
from probmcl_med.evaluation.document import Block, Figure, Heading, Paragraph, Table, to_html, to_markdown
from probmcl_med.evaluation.plots import OK_COLOR, REPORT_WIDTH_PX
from probmcl_med.evaluation.render import fmt, fmt_ci
from probmcl_med.fileio import atomic_directory, check_replaceable_folder

MARKER = ".probmcl-med-compare"
TITLE = "ProbMCL model comparison"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;padding:0 1em;max-width:REPORT_WIDTHpx;
color:#222;line-height:1.4}h2{margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.8em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.note{color:#555}figcaption{color:#555;font-size:.9em}
p.verdict{font-size:1.1em;margin:.4em 0;padding:.6em .9em;border-left:5px solid #1565c0;background:#eef4fb}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px}
""".replace("REPORT_WIDTH", str(REPORT_WIDTH_PX))


def _signed_ci(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.1f}" if ci is None else f"{value:+.1f} ({ci[0]:+.1f} to {ci[1]:+.1f})"


def format_p(p: float | None, resamples: int) -> str:
    """A bootstrap p-value for display; at its floor 1 / (B + 1), ``<= 0.001`` (B resamples cannot show less)."""
    if p is None:
        return "n/a"
    floor = 1.0 / (resamples + 1)
    return f"<= {floor:.2g}" if p <= floor * (1 + 1e-9) else f"{p:.3g}"


def conclusion(delta: dict[str, Any], num_samples: int) -> str:
    """The difference in mAP and what it means, in one sentence."""
    d, ci, p = delta["delta_mAP"], delta["delta_mAP_ci"], delta["delta_mAP_p"]
    model, reference = delta["model"], delta["reference"]
    if d is None:
        return f"**{model} against {reference}:** no class has a positive image, so there is no mAP to compare."
    head = f"**{model} against {reference}:** mAP {d:+.1f} points"
    if ci is None:
        return f"{head}; {num_samples} images are too few for an interval, so the difference cannot be judged."
    shown = format_p(p, delta["method"]["resamples"])
    shown = f"p {shown}" if shown.startswith("<") else f"p = {shown}"
    said = f"{head} (95 % CI {ci[0]:+.1f} to {ci[1]:+.1f}, {shown}; paired bootstrap over {num_samples} images)"
    if ci[0] > 0:
        return f"{said}: {model} ranks these images better than {reference}."
    if ci[1] < 0:
        return f"{said}: {model} ranks these images worse than {reference}."
    return f"{said}: within what another sample of {num_samples} images could give; no evidence either way."


def forest_plot(delta: dict[str, Any]) -> bytes:
    """Per class, the AP difference (points) with its 95 % interval, and mAP's on top; 0 marked. PNG bytes."""
    rows = [("mAP", delta["delta_mAP"], delta["delta_mAP_ci"])]
    rows += [(r["name"], r["delta_ap"], r["delta_ap_ci"]) for r in delta["per_class"] if r["delta_ap"] is not None]
    rows = rows[::-1]  # drawn bottom-up: mAP on top
    fig = MplFigure(figsize=(9, 0.32 * len(rows) + 1.4))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    for i, (name, value, ci) in enumerate(rows):
        bold = name == "mAP"
        if ci is not None:
            ax.errorbar(value, i, xerr=[[value - ci[0]], [ci[1] - value]], fmt="o", color=OK_COLOR, capsize=3,
                        markersize=7 if bold else 5, linewidth=2 if bold else 1.2)  # fmt: skip
        else:
            ax.plot(value, i, "o", markerfacecolor="white", color="gray", markersize=5)
    ax.axvline(0, color="#c62828", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{name}" + ("" if ci is not None else " (too few for a CI)") for name, _, ci in rows],
                  fontsize=10)  # fmt: skip
    for label, (name, _, _) in zip(ax.get_yticklabels(), rows, strict=True):
        if name == "mAP":
            label.set_fontweight("bold")
    ax.set_xlabel(f"AP of {delta['model']} minus AP of {delta['reference']} (points); whiskers: 95 % interval",
                  fontsize=10)  # fmt: skip
    ax.set_title(f"{delta['model']} against {delta['reference']}: right of the dashed line is better", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _per_class_rows(delta: dict[str, Any], reference: dict[str, Any], model: dict[str, Any]) -> list[list[str]]:
    """Per class: positives, both APs, the difference with its interval (or why none) and its p-value."""
    rows = []
    for r, a, b in zip(delta["per_class"], reference["per_class"], model["per_class"], strict=True):
        diff = _signed_ci(r["delta_ap"], r["delta_ap_ci"])
        if r["delta_ap"] is not None and r["delta_ap_ci"] is None:
            diff += f" (n={r['support']}: too few for a CI)"
        rows.append(
            [
                r["name"],
                str(r["support"]),
                fmt(a["ap"]),
                fmt(b["ap"]),
                diff,
                format_p(r["delta_ap_p"], delta["method"]["resamples"]),
            ]
        )
    return rows


def comparison_blocks(comparison: Comparison, figures: dict[str, bytes]) -> list[Block]:
    """The page: a sentence per compared model, the metrics side by side, the differences, per class."""
    n = int(comparison.targets.shape[0])
    blocks: list[Block] = [Paragraph(conclusion(d, n), "verdict") for d in comparison.deltas]
    blocks.append(Paragraph(f"Images: the {comparison.split} ({n} images, {len(comparison.class_names)} classes). "
                            f"Reference: **{comparison.reference.label}**.", "note"))  # fmt: skip
    header = ["model", *SUMMARY_KEYS, "thresholds"]
    rows = []
    for model, metrics in zip(comparison.models, comparison.metrics, strict=True):
        s = metrics["summary"]
        rows.append([model.label, fmt_ci(s["mAP"], s.get("mAP_ci")), *(fmt(s[k]) for k in SUMMARY_KEYS[1:]),
                     model.thresholds_from])  # fmt: skip
    blocks += [Heading("The paper's metrics side by side (percent; mAP with its 95 % interval)"), Table(header, rows)]
    header = ["model", "Δ mAP (95 % CI)", "p", *(f"Δ {k}" for k in SUMMARY_KEYS[1:])]
    rows = [
        [d["model"], _signed_ci(d["delta_mAP"], d["delta_mAP_ci"]), format_p(d["delta_mAP_p"], d["method"]["resamples"]),
         *(_signed_ci(d["delta_summary"][k], None) for k in SUMMARY_KEYS[1:])]
        for d in comparison.deltas
    ]  # fmt: skip
    blocks += [
        Heading(f"Differences against {comparison.reference.label} (percentage points, model minus reference)"),
        Table(header, rows),
        Paragraph(
            "mAP and AP rank the images whatever the threshold: their differences carry a paired bootstrap "
            "interval and p-value. CP ... OF1 depend on each model's operating point (its thresholds) and are "
            "shown as plain differences.",
            "note",
        ),
    ]
    for i, d in enumerate(comparison.deltas, start=1):
        name = f"delta_ap_{i}.png"
        title = f"Per class: {d['model']} minus {d['reference']}"
        header = ["class", "positives", f"AP {d['reference']}", f"AP {d['model']}", "Δ AP (95 % CI)", "p"]
        caption = "Each class's AP difference with its 95 % paired bootstrap interval; hollow: no interval."
        blocks += [
            Heading(title),
            Table(header, _per_class_rows(d, comparison.metrics[0], comparison.metrics[i])),
            Figure(name, title, figures[name], caption),
        ]
    method = comparison.deltas[0]["method"]
    blocks.append(Paragraph(f"Method: {method['name']}, {method['resamples']} resamples (seed {method['seed']}); "
                            f"p-value {method['p_value']}.", "note"))  # fmt: skip
    return blocks


def write_comparison(out_dir: str | Path, comparison: Comparison) -> Path:
    """Write ``compare.html``, ``compare.md``, ``compare.json`` and the forest plots into ``out_dir``, whole or not
    at all.

    Raises:
        DataError: ``out_dir`` is a file or a folder holding files an earlier comparison did not write.
    """
    out_dir = Path(out_dir)
    check_replaceable_folder(out_dir, MARKER, "comparison", "--out")
    figures = {f"delta_ap_{i}.png": forest_plot(d) for i, d in enumerate(comparison.deltas, start=1)}
    blocks = comparison_blocks(comparison, figures)
    with atomic_directory(out_dir, MARKER, what="comparison", option="--out", written_by="probmcl-med compare") as tmp:
        document = json.dumps(comparison.to_dict(), indent=2, allow_nan=False) + "\n"
        (tmp / "compare.json").write_text(document, encoding="utf-8")
        for name, data in figures.items():
            (tmp / name).write_bytes(data)
        (tmp / "compare.md").write_text(to_markdown(TITLE, blocks), encoding="utf-8")
        (tmp / "compare.html").write_text(to_html(TITLE, blocks, CSS), encoding="utf-8")
    return out_dir
