"""The evaluation report folder: numbers, scores, plots, and a report a pathologist reads recall-first.

The report opens with what the model does at its operating point, in words (:mod:`.findings`: over-called classes,
classes under the recall floor, what to do), then the run, the summary with its bootstrap interval and a one-line
glossary entry per number, the operating point against the paper's 0.5 (when thresholds were tuned), the per-class
table with 95 % intervals, the figures (recall and precision, precision-recall curves, calibration, training
curves when the run folder is known, label co-occurrence) and, per class, the most confident mistakes with their
Grad-CAM (:mod:`.gallery`, when the images are at hand).

``write_report`` writes, into one folder::

    metrics.json            the metrics dict with per-class recall_ci, precision_ci, ap_ci, ece; summary.mAP_ci;
                            bootstrap, calibration, findings, operating_point, meta, recall and precision floors
    per_class.csv           one row per class, in class order
    scores.npz              scores (N, C), targets (N, C), class_names (C,): enough to recompute everything
    recall_precision.png    per-class recall and precision bars with their intervals, the floors marked
    precision_recall.png    a precision-recall panel per class
    calibration.png         reliability diagram (all classes pooled) and ECE per class
    training_curves.png     loss and validation metrics per epoch (only when the run's metrics.jsonl is known)
    cooccurrence.png        label co-occurrence, ground truth vs predicted
    gallery/*.png           the confident mistakes, [image | Grad-CAM] per thumbnail (only with a gallery)
    report.md               the report, images by relative path
    report.html             the same report, self-contained: the images embedded as base64 data URIs
    .probmcl-med-report     the manifest: every file and folder this report wrote (JSON)

The folder is written whole or not at all: it is built under a temporary sibling name and renamed into place
(:func:`probmcl_med.fileio.atomic_directory`), so a failure (a plot that raises, a full disk) leaves the previous
report, or nothing, never a half-written folder. An existing folder is replaced whole only if it holds nothing but
what its manifest lists; a folder holding other files (a user's notes) is an error, or with ``--overwrite`` keeps
them and replaces only the report's own files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.core.metrics import SUMMARY_KEYS, as_numpy, below_recall_floor, check_recall_floor
from probmcl_med.errors import DataError
from probmcl_med.evaluation import plots
from probmcl_med.evaluation.bootstrap import bootstrap_intervals
from probmcl_med.evaluation.calibration import calibration_summary
from probmcl_med.evaluation.document import (
    Block,
    Bullets,
    Figure,
    Gallery,
    Heading,
    Paragraph,
    Table,
    Thumbnail,
    to_html,
    to_markdown,
)
from probmcl_med.evaluation.findings import GLOSSARY, PRECISION_FLOOR, findings, over_called
from probmcl_med.evaluation.gallery import KINDS, Example, Mistakes
from probmcl_med.evaluation.render import PER_CLASS_COLUMNS, fmt, fmt_ci, per_class_rows, threshold_text
from probmcl_med.fileio import atomic_directory, check_replaceable_folder

MARKER = ".probmcl-med-report"
TITLE = "ProbMCL evaluation report"
CSV_FIELDS = (
    "name", "ap", "ap_lo", "ap_hi", "precision", "precision_lo", "precision_hi", "recall", "recall_lo", "recall_hi",
    "f1", "support", "predicted", "tp", "ece", "threshold", "below_floor", "over_called",
)  # fmt: skip
HEADER_KEYS = ("checkpoint", "dataset", "split", "date")
FIGURES = (
    ("recall_precision.png", "Recall and precision per class"),
    ("precision_recall.png", "Precision-recall curves"),
    ("calibration.png", "Calibration"),
    ("cooccurrence.png", "Label co-occurrence: ground truth vs predicted"),
)
"""The figures every report has, in order (training_curves.png comes before co-occurrence when there is a log)."""
CURVES = ("training_curves.png", "Training curves")
CAPTIONS = {
    "recall_precision.png": "Classes sorted by recall, lowest on top. Left: recall, red when under the recall floor "
    "(dashed line). Right: precision, orange when under the precision floor (dotted line). Whiskers: 95 % bootstrap "
    "intervals.",
    "precision_recall.png": "One panel per class: precision against recall as the threshold moves; the dot is this "
    "report's operating point.",
    "calibration.png": "Left: for the scores in each probability bin, how often the class is really there; points on "
    "the dashed diagonal are calibrated, points below it mean the model is over-confident. Below: how many (image, "
    "class) pairs fall in each bin. Right: ECE per class.",
    "training_curves.png": "From the run's metrics.jsonl: per training stage, the loss per epoch (left) and the "
    "validation mAP, CF1 and OF1 per epoch (right).",
    "cooccurrence.png": "P(column class | row class): left in the ground truth, right in the predictions at this "
    "operating point. A predicted pairing that the truth lacks is a pattern the model invented.",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;
line-height:1.4}h1{margin-bottom:.3em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}td{white-space:nowrap}tr.floor td{color:#c62828;font-weight:600}
tr.over td{background:#fff3e0}th{background:#f3f3f3}table.run td{text-align:left}
table.run td{white-space:normal}table.run td:first-child{font-weight:600;white-space:nowrap}
img{max-width:100%;border:1px solid #eee}.note{color:#555}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
p.finding{margin:.35em 0;padding:.4em .8em;border-left:4px solid #ef6c00;background:#fff8f0}
p.warning{margin:.35em 0;padding:.4em .8em;border-left:4px solid #c62828;background:#fdecea}
ul.glossary{columns:2;font-size:.88em;color:#333;padding-left:1.2em}ul.glossary li{break-inside:avoid}
code{background:#f3f3f3;padding:1px 4px;border-radius:3px;font-size:.92em}
.gallery{display:flex;flex-wrap:wrap;align-items:flex-start;gap:8px;margin:.3em 0 .8em}
.gallery .label{width:100%;font-weight:600}.gallery .empty{color:#777}
figure.thumb{margin:0;width:244px}figure.thumb img{width:244px}figure.thumb figcaption{font-size:.75em}
"""


def add_statistics(
    metrics: dict[str, Any], scores: Any, targets: Any, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """``metrics`` with 95 % bootstrap intervals and calibration added (a new dict; ``metrics`` is not changed).

    Adds per class ``recall_ci``, ``precision_ci``, ``ap_ci`` ([lo, hi] percent or None) and ``ece`` (percent);
    ``summary.mAP_ci``; ``bootstrap`` (the method; None with ``resamples=0``, which leaves every interval None) and
    ``calibration`` (overall ECE and the reliability table). The intervals are at the thresholds the metrics were
    computed with.
    """
    if resamples < 0:
        raise DataError(f"--bootstrap {resamples}: give a number of resamples, or 0 for no intervals")
    thresholds = np.array([r["threshold"] for r in metrics["per_class"]])
    if resamples:
        intervals = bootstrap_intervals(scores, targets, thresholds, resamples=resamples, seed=seed)
    else:
        none = dict.fromkeys(("recall_ci", "precision_ci", "ap_ci"))
        intervals = {"per_class": [dict(none) for _ in metrics["per_class"]], "mAP_ci": None, "method": None}
    calibration = calibration_summary(scores, targets)
    per_class = [
        {**row, **ci, "ece": ece}
        for row, ci, ece in zip(metrics["per_class"], intervals["per_class"], calibration["per_class_ece"], strict=True)
    ]
    return {
        **metrics,
        "summary": {**metrics["summary"], "mAP_ci": intervals["mAP_ci"]},
        "per_class": per_class,
        "bootstrap": intervals["method"],
        "calibration": {k: v for k, v in calibration.items() if k != "per_class_ece"},
    }


def _header_items(
    metrics: dict[str, Any], meta: dict[str, Any], recall_floor: float, precision_floor: float
) -> list[tuple[str, str]]:
    """The report's run lines, in order: checkpoint, dataset, split, date, any other meta, then the settings."""
    items = [(key, str(meta[key]) if meta.get(key) not in (None, "") else "not given") for key in HEADER_KEYS]
    items += [(str(k), str(v)) for k, v in meta.items() if k not in HEADER_KEYS]
    items += [
        ("threshold", threshold_text(metrics)),
        ("recall floor", f"{100 * recall_floor:g} %"),
        ("precision floor", f"{100 * precision_floor:g} % (called with less: over-called)"),
        ("samples", str(metrics["num_samples"])),
        ("classes", f"{metrics['num_classes']} ({metrics['num_evaluated_classes']} with a positive)"),
    ]
    return items


def _summary_blocks(metrics: dict[str, Any]) -> list[Block]:
    summary = metrics["summary"]
    header = [*SUMMARY_KEYS, "ECE"]
    row = [fmt_ci(summary[k], summary.get(f"{k}_ci")) for k in SUMMARY_KEYS]
    row.append(fmt(metrics.get("calibration", {}).get("ece")))
    blocks: list[Block] = [Heading("Summary (percent; mAP with its 95 % bootstrap interval)"), Table(header, [row])]
    if metrics["excluded_from_map"]:
        blocks.append(
            Bullets(
                [f"excluded from mAP, CP, CR: **{i['name']}**: {i['reason']}" for i in metrics["excluded_from_map"]]
            )
        )
    method = metrics.get("bootstrap")
    if method:
        blocks.append(
            Paragraph(
                f"Intervals: {method['name']}, {method['resamples']} resamples (seed {method['seed']}); the "
                "thresholds stay fixed.",
                "note",
            )
        )
    blocks.append(Heading("What the numbers mean", 3))
    blocks.append(Bullets([f"**{key}**: {text}" for key, text in GLOSSARY.items()], "glossary"))
    return blocks


def _tradeoff_blocks(tradeoff: dict[str, Any]) -> list[Block]:
    b = tradeoff["baseline_threshold"]
    header = ["class", "threshold", f"recall @{b:g}", "recall tuned", f"precision @{b:g}", "precision tuned"]
    rows = [
        [r["name"], f"{r['threshold']:.3g}", fmt(r["recall_baseline"]), fmt(r["recall_tuned"]),
         fmt(r["precision_baseline"]), fmt(r["precision_tuned"])]
        for r in tradeoff["per_class"]
    ]  # fmt: skip
    tuned, base = tradeoff["summary"]["tuned"], tradeoff["summary"]["baseline"]
    pairs = ", ".join(f"{k} {fmt(base[k])} -> {fmt(tuned[k])}" for k in ("CP", "CR", "OP", "OR"))
    return [
        Heading(f"The operating point: tuned thresholds against {b:g} (percent)"),
        Paragraph(
            f"The same images at the paper's single threshold {b:g} and at the tuned per-class thresholds: {pairs}. "
            "mAP and AP do not depend on the threshold."
        ),
        Table(header, rows),
    ]


def _gallery_blocks(gallery: Mistakes | None, class_names: list[str]) -> list[Block]:
    blocks: list[Block] = [Heading("Most confident mistakes per class, with Grad-CAM")]
    if gallery is None:
        return [
            *blocks,
            Paragraph("Not drawn: the images are not at hand (saved scores) or `--gallery 0` was given.", "note"),
        ]
    h, w = gallery.layer_size
    blocks.append(
        Paragraph(
            "Per class, the images the model missed with the lowest scores and the false alarms with the highest "
            "scores. Each thumbnail shows the image as the model saw it (left) and the Grad-CAM of that class over "
            "it (right: red = the regions that raise the class's score most). Grad-CAM layer: "
            f"`{gallery.target_layer}`, a {h} x {w} map at the model's input size.",
            "note",
        )
    )
    if gallery.examples and gallery.flat:
        blocks.append(
            Paragraph(
                f"**The Grad-CAM maps are flat:** layer `{gallery.target_layer}` gives a {h} x {w} map at this input "
                "size, so the overlays cannot show where the class is (a uniform colour). The thumbnails still show "
                "which images the model gets wrong.",
                "warning",
            )
        )
    labels = {"missed": "Missed (has the class, scored low)", "false alarm": "False alarms (lacks it, scored high)"}
    for c, name in enumerate(class_names):
        blocks.append(Heading(name, 3))
        for kind in KINDS:
            mine = [ex for ex in gallery.examples if ex.class_index == c and ex.kind == kind]
            thumbs = [Thumbnail(_gallery_file(ex, i), ex.png, ex.caption) for i, ex in enumerate(mine)]
            blocks.append(Gallery(labels[kind], thumbs, empty=f"none: no {kind} at this operating point"))
    return blocks


def _gallery_file(ex: Example, i: int) -> str:
    kind = "missed" if ex.kind == "missed" else "false_alarm"
    return f"gallery/class{ex.class_index:03d}_{kind}_{i}.png"


def _blocks(
    metrics: dict[str, Any],
    meta: dict[str, Any],
    recall_floor: float,
    precision_floor: float,
    images: dict[str, bytes],
    gallery: Mistakes | None,
    names: list[str],
) -> list[Block]:
    op = metrics.get("operating_point")
    said = findings(metrics, recall_floor, precision_floor, op)
    blocks: list[Block] = [
        Paragraph(line, "warning" if line.startswith("**Caution") else "finding") for line in said.lines
    ]
    items = _header_items(metrics, meta, recall_floor, precision_floor)
    run = Table(["", ""], [[k, v] for k, v in items], css="run")
    blocks += [Heading("The run"), run]
    blocks += _summary_blocks(metrics)
    if metrics.get("threshold_tuning"):
        blocks += _tradeoff_blocks(metrics["threshold_tuning"])
    rows = per_class_rows(metrics, recall_floor, precision_floor)
    blocks += [
        Heading("Per class, lowest recall first"),
        Table(list(PER_CLASS_COLUMNS), [cells for _, cells in rows], [marks for marks, _ in rows]),
    ]
    figures = [*FIGURES[:3], *([CURVES] if CURVES[0] in images else []), FIGURES[3]]
    for filename, title in figures:
        blocks += [Heading(title), Figure(filename, title, images[filename], CAPTIONS[filename])]
    if CURVES[0] not in images:
        blocks.append(Paragraph("Training curves: not drawn (no metrics.jsonl beside the checkpoint).", "note"))
    blocks += _gallery_blocks(gallery, names)
    return blocks


def _per_class_csv(metrics: dict[str, Any], recall_floor: float, precision_floor: float) -> str:
    under = set(below_recall_floor(metrics, recall_floor))
    over = set(over_called(metrics, precision_floor))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in metrics["per_class"]:
        row = {k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS if k in r}
        for key in ("ap", "precision", "recall"):
            ci = r.get(f"{key}_ci")
            row[f"{key}_lo"], row[f"{key}_hi"] = ("", "") if ci is None else ci
        writer.writerow({**row, "below_floor": int(r["name"] in under), "over_called": int(r["name"] in over)})
    return buf.getvalue()


def write_report(
    out_dir: str | Path,
    metrics: dict[str, Any],
    scores: Any,
    targets: Any,
    class_names: Sequence[str],
    meta: dict[str, Any] | None = None,
    recall_floor: float = 0.8,
    *,
    precision_floor: float = PRECISION_FLOOR,
    training_log: Sequence[dict[str, Any]] | None = None,
    gallery: Mistakes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the report folder (see the module docstring) atomically, replacing an earlier report at ``out_dir``.

    Args:
        out_dir: the folder to create (or replace, if it is an earlier report).
        metrics: the dict from :func:`.metrics.multilabel_metrics` for these scores and targets; intervals and
            calibration are added here when absent (:func:`add_statistics`). An ``operating_point`` entry (what
            the thresholds are; see :func:`.findings.findings`) and ``threshold_tuning`` (tuned vs 0.5) are
            reported when present.
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        class_names: C names.
        meta: what the report states about the run: ``checkpoint``, ``dataset``, ``split``, ``date`` (ISO time of
            now, UTC, when absent), and any other keys (shown after them). Values are shown with ``str``.
        recall_floor: a fraction in [0, 1]; classes with recall under it are marked in the table and plots.
        precision_floor: a fraction in [0, 1]; classes called with precision under it are over-called.
        training_log: the records of the run's ``metrics.jsonl`` (training curves), or None.
        gallery: the confident mistakes with their thumbnails (:func:`.gallery.build_gallery`), or None (the report
            says why there is none).
        overwrite: write into a folder holding files this package did not write (only the report's own files are
            replaced; see :func:`probmcl_med.fileio.atomic_directory`).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        DataError: ``out_dir`` is a file, or (without ``overwrite``) a folder holding files that are not a report's,
            or a floor is not a fraction.
    """
    out_dir = Path(out_dir)
    check_recall_floor(recall_floor)
    check_recall_floor(precision_floor)
    check_replaceable_folder(out_dir, MARKER, "report", "--report", overwrite)
    s, t = as_numpy(scores), as_numpy(targets)
    names = [str(n) for n in class_names]
    meta = dict(meta or {})
    meta.setdefault("date", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if "calibration" not in metrics:
        metrics = add_statistics(metrics, s, t)
    thresholds = np.array([r["threshold"] for r in metrics["per_class"]])

    images = {
        "recall_precision.png": plots.recall_precision_bars(metrics, recall_floor, precision_floor),
        "precision_recall.png": plots.precision_recall_grid(s, t, names, metrics),
        "calibration.png": plots.reliability_diagram(metrics["calibration"] | _ece(metrics), names),
        "cooccurrence.png": plots.cooccurrence_heatmaps(t, s >= thresholds[None, :], names),
    }
    if training_log:
        images[CURVES[0]] = plots.training_curves(training_log)
    said = findings(metrics, recall_floor, precision_floor, metrics.get("operating_point"))
    document = {
        **metrics,
        "meta": meta,
        "recall_floor": recall_floor,
        "precision_floor": precision_floor,
        "below_recall_floor": below_recall_floor(metrics, recall_floor),
        "findings": said.to_dict(),
    }
    blocks = _blocks(metrics, meta, recall_floor, precision_floor, images, gallery, names)
    written_by = "probmcl_med.evaluation.write_report"
    with atomic_directory(
        out_dir, MARKER, overwrite=overwrite, what="report", option="--report", written_by=written_by
    ) as tmp:
        (tmp / "metrics.json").write_text(
            json.dumps(document, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8"
        )
        (tmp / "per_class.csv").write_text(_per_class_csv(metrics, recall_floor, precision_floor), encoding="utf-8")
        np.savez_compressed(tmp / "scores.npz", scores=s, targets=t, class_names=np.array(names, dtype=str))
        for filename, data in images.items():
            (tmp / filename).write_bytes(data)
        if gallery is not None and gallery.examples:
            (tmp / "gallery").mkdir()
            for block in blocks:
                for thumb in block.thumbnails if isinstance(block, Gallery) else []:
                    (tmp / thumb.filename).write_bytes(thumb.data)
        (tmp / "report.md").write_text(to_markdown(TITLE, blocks), encoding="utf-8")
        (tmp / "report.html").write_text(to_html(TITLE, blocks, _CSS), encoding="utf-8")
    return out_dir


def _ece(metrics: dict[str, Any]) -> dict[str, list[float]]:
    return {"per_class_ece": [r["ece"] for r in metrics["per_class"]]}
