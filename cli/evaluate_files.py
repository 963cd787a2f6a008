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


def evaluate_files(
    scores: Path,
    targets: Path,
    report: Path | None,
    threshold: float,
    recall_floor: float,
    json_out: bool,
    console: Console | None = None,
) -> int:
    """Load scores and targets, compute the metrics, print them, and write a report folder if asked.

    Args:
        scores: (N, C) probabilities, CSV (header = class names) or .npy.
        targets: (N, C) 0/1 labels, same format rules.
        report: a folder to write the report into (replacing an earlier report there), or None.
        threshold: the decision threshold for every class (positive when score >= threshold).
        recall_floor: a fraction in [0, 1]; classes with recall under it are shown in red and listed.
        json_out: print the metrics dict as JSON on stdout instead of tables (for scripts).
        console: where tables go (stdout by default).

    Returns:
        0. Bad input raises :class:`probmcl_med.errors.UserError` (DataError) for ``main()`` to print in one line.
    """
    check_recall_floor(recall_floor)
    s, t, names = load_scores_targets(scores, targets)
    metrics = multilabel_metrics(s, t, threshold=threshold, class_names=names)
    if report is not None:
        meta = {
            "checkpoint": "none (scores read from file)",
            "dataset": str(targets),
            "split": "as given in the files",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "scores file": str(scores),
            "targets file": str(targets),
        }
        write_report(report, metrics, s, t, names, meta, recall_floor=recall_floor)
    if json_out:
        document = {
            **metrics,
            "recall_floor": recall_floor,
            "below_recall_floor": below_recall_floor(metrics, recall_floor),
            "report": None if report is None else str(report),
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return 0
    console = console or Console()
    render_summary(metrics, recall_floor, console)
    render_per_class_table(metrics, recall_floor, console)
    if report is not None:
        console.print(f"report written to {report}/report.html")
    return 0
