"""``probmcl-med evaluate --scores S --targets T``: metrics (and optionally a report folder) from saved scores.

No model and no torch run here: the scores are a model's saved probabilities (CSV or .npy, see
:mod:`probmcl_med.evaluation.io`), so a result can be re-read, re-thresholded and re-reported at any time.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from probmcl_med.core.metrics import check_recall_floor
from probmcl_med.evaluation import (
    below_recall_floor,
    load_scores_targets,
    multilabel_metrics,
    render_per_class_table,
    render_summary,
    write_report,
)
from probmcl_med.evaluation.findings import findings
from probmcl_med.evaluation.report import add_statistics


def evaluate_files(
    scores: Path,
    targets: Path,
    report: Path | None,
    threshold: float | None,
    recall_floor: float,
    json_out: bool,
    console: Console | None = None,
    precision_floor: float = 0.5,
    resamples: int = 1000,
    overwrite: bool = False,
) -> int:
    """Load scores and targets, compute the metrics, print them, and write a report folder if asked.

    Args:
        scores: (N, C) probabilities, CSV (header = class names) or .npy.
        targets: (N, C) 0/1 labels, same format rules.
        report: a folder to write the report into (replacing an earlier report there), or None.
        threshold: the decision threshold for every class (positive when score >= threshold); None: 0.5.
        recall_floor: a fraction in [0, 1]; classes with recall under it are shown in red and listed.
        json_out: print the metrics dict as JSON on stdout instead of tables (for scripts).
        console: where tables go (stdout by default).
        precision_floor: a fraction in [0, 1]; classes called with precision under it are over-called.
        resamples: bootstrap resamples for the 95 % intervals (0: none).
        overwrite: write the report into a folder holding other files (only the report's own files replaced).

    Returns:
        0. Bad input raises :class:`probmcl_med.errors.UserError` (DataError) for ``main()`` to print in one line.
    """
    check_recall_floor(recall_floor)
    check_recall_floor(precision_floor)
    s, t, names = load_scores_targets(scores, targets)
    source = f"--threshold {threshold:g} for every class" if threshold is not None else "0.5 for every class (default)"
    metrics = multilabel_metrics(s, t, threshold=0.5 if threshold is None else threshold, class_names=names)
    metrics = add_statistics(metrics, s, t, resamples=resamples)
    metrics["operating_point"] = {"tuned": False, "description": source, "checkpoint": None}
    if report is not None:
        meta = {
            "checkpoint": "none (scores read from file)",
            "dataset": str(targets),
            "split": "as given in the files",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "scores file": str(scores),
            "targets file": str(targets),
            "thresholds from": source,
        }
        write_report(
            report, metrics, s, t, names, meta, recall_floor, precision_floor=precision_floor, overwrite=overwrite
        )
    if json_out:
        document = {
            **metrics,
            "recall_floor": recall_floor,
            "precision_floor": precision_floor,
            "below_recall_floor": below_recall_floor(metrics, recall_floor),
            "findings": findings(metrics, recall_floor, precision_floor, metrics["operating_point"]).to_dict(),
            "report": None if report is None else str(report),
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    console = console or Console()
    console.print(f"thresholds: {source}", highlight=False, soft_wrap=True, markup=False)
    render_summary(metrics, recall_floor, console, precision_floor, metrics["operating_point"])
    render_per_class_table(metrics, recall_floor, console, precision_floor)
    if report is not None:
        console.print(f"report written to {report}/report.html")
    return 0
