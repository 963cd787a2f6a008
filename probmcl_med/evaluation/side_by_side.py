"""Two or more evaluation reports side by side, one markdown row each (what ``make demo`` prints at its end).

    python -m probmcl_med.evaluation.side_by_side runs/demo-default/report runs/demo/report

Each argument is a report folder written by ``probmcl-med evaluate --report`` (its ``metrics.json``). The row: the
run's mode, the split, test mAP, CF1, CP and CR at the report's thresholds, the lowest per-class recall (what a
pathologist reads first), the ECE over all (image, class) pairs and the worst class's ECE, and where the
probabilities came from (raw, or a calibration file). Percent throughout. A stand-in until ``probmcl-med compare``
(which pairs two runs with paired tests) is available.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ["report", "mode", "split", "mAP", "CF1", "CP", "CR", "lowest class recall", "ECE", "worst class ECE"]


def row(report: Path) -> list[str]:
    """The table row of one report folder."""
    metrics: dict[str, Any] = json.loads((report / "metrics.json").read_text())
    summary, meta = metrics["summary"], metrics.get("meta") or {}
    per_class = [c for c in metrics["per_class"] if c.get("recall") is not None]
    lowest = min(per_class, key=lambda c: c["recall"]) if per_class else None
    eces = [c["ece"] for c in metrics["per_class"] if c.get("ece") is not None]
    worst = max(metrics["per_class"], key=lambda c: c.get("ece") or -1.0) if eces else None
    mode = meta.get("mode") or _mode(meta.get("checkpoint"))

    def pct(value: Any) -> str:
        return "-" if value is None else f"{float(value):.1f}"

    return [
        str(report),
        mode,
        str(meta.get("split", "-")),
        pct(summary.get("mAP")),
        pct(summary.get("CF1")),
        pct(summary.get("CP")),
        pct(summary.get("CR")),
        "-" if lowest is None else f"{lowest['recall']:.1f} ({lowest['name']})",
        pct((metrics.get("calibration") or {}).get("ece")),
        "-" if worst is None else f"{worst['ece']:.1f} ({worst['name']})",
    ]


def _mode(checkpoint: Any) -> str:
    """The training mode recorded in the run folder's config.yaml, or ``-``."""
    if not checkpoint:
        return "-"
    config = Path(str(checkpoint)).parent / "config.yaml"
    if not config.is_file():
        return "-"
    for line in config.read_text().splitlines():
        if line.startswith("mode:"):
            return line.split(":", 1)[1].strip()
    return "-"


def table(reports: list[Path]) -> str:
    """The markdown table of ``reports``, one row each."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in reports]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    reports = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    missing = [r for r in reports if not (r / "metrics.json").is_file()]
    if not reports or missing:
        print(f"error: give report folders written by `probmcl-med evaluate --report`; no metrics.json in {missing}")
        return 2
    print(table(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
