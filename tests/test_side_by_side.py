"""`python -m probmcl_med.evaluation.side_by_side` (the end of `make demo`): one row per report, read off metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

from probmcl_med.evaluation.side_by_side import main, table


def _report(folder: Path, mode: str, recalls: list[float], eces: list[float]) -> Path:
    run = folder / "run"
    (run / "report").mkdir(parents=True)
    (run / "config.yaml").write_text(f"mode: {mode}\nseed: 0\n")
    per_class = [{"name": f"c{i}", "recall": r, "ece": e} for i, (r, e) in enumerate(zip(recalls, eces, strict=True))]
    metrics = {
        "summary": {"mAP": 81.234, "CF1": 70.0, "CP": 75.0, "CR": 65.0},
        "per_class": per_class,
        "calibration": {"ece": 4.56},
        "meta": {"checkpoint": str(run / "model.pt"), "split": "test"},
    }
    (run / "report" / "metrics.json").write_text(json.dumps(metrics))
    return run / "report"


def test_rows_name_the_mode_the_lowest_recall_and_the_worst_ece(tmp_path: Path, capsys) -> None:
    a = _report(tmp_path / "a", "asl", [90.0, 12.5, 70.0], [3.0, 9.5, 1.0])
    b = _report(tmp_path / "b", "two-stage", [50.0, 60.0, 40.0], [30.0, 2.0, 4.0])
    lines = table([a, b]).splitlines()
    assert len(lines) == 4
    cells_a = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells_a[1:] == ["asl", "test", "81.2", "70.0", "75.0", "65.0", "12.5 (c1)", "4.6", "9.5 (c1)"]
    cells_b = [c.strip() for c in lines[3].strip("|").split("|")]
    assert cells_b[1] == "two-stage" and cells_b[7] == "40.0 (c2)" and cells_b[9] == "30.0 (c0)"
    assert main([str(a), str(tmp_path / "missing")]) == 2 and "no metrics.json" in capsys.readouterr().out
