"""What the report adds to the paper's metrics, each against an independent computation: the findings (a plain
rule per class), the gallery (a sort by hand), and the report page itself (the findings come first, every column
has a glossary line, the intervals of the bootstrap and the ECE of the calibration module are in metrics.json and
in the table)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from test_bootstrap_calibration import _data

from probmcl_med.core.metrics import SUMMARY_KEYS, multilabel_metrics
from probmcl_med.evaluation.bootstrap import bootstrap_intervals
from probmcl_med.evaluation.calibration import calibration_summary
from probmcl_med.evaluation.findings import GLOSSARY, findings, over_called
from probmcl_med.evaluation.gallery import select_mistakes
from probmcl_med.evaluation.render import PER_CLASS_COLUMNS
from probmcl_med.evaluation.report import FIGURES, write_report
from probmcl_med.evaluation.result import assemble
from probmcl_med.evaluation.statistics import add_statistics
from probmcl_med.evaluation.thresholds import OperatingPoint


def test_over_called_and_findings_follow_the_plain_rule() -> None:
    rng = np.random.default_rng(2)
    n = 200
    targets = np.zeros((n, 4))
    targets[:20, 0] = 1  # present in 10 %, called in 40 %: over-called by rate, precision 25 %
    targets[:100, 1] = 1  # present in 50 %, called in 60 %: precision 83 %, fine
    targets[:50, 2] = 1  # called in 12 %, only 20 of 50 found: under the recall floor
    scores = np.zeros((n, 4))
    scores[:80, 0] = 0.9
    scores[:120, 1] = 0.9
    scores[:20, 2] = 0.9
    scores[150:154, 2] = 0.9  # 4 false alarms: precision 20 / 24 = 83 %
    scores[:, 3] = rng.random(n) * 0.4  # never called, never present
    metrics = multilabel_metrics(scores, targets, class_names=["a", "b", "c", "d"])
    by_hand = []
    for k in range(4):
        called, present = (scores[:, k] >= 0.5).sum(), targets[:, k].sum()
        tp = ((scores[:, k] >= 0.5) & (targets[:, k] == 1)).sum()
        if called and (present == 0 or called >= 1.5 * present or tp / called < 0.5):
            by_hand.append("abcd"[k])
    assert sorted(over_called(metrics)) == by_hand == ["a"]
    said = findings(metrics, 0.8, operating_point=OperatingPoint("0.5", checkpoint="runs/x"))
    assert said.over_called == ["a"] and said.under_floor == ["c"]
    assert "called in 40 % of images, present in 10 %, precision 25 %" in said.lines[0]
    assert "c (recall 40 %)" in said.lines[1]
    assert "probmcl-med evaluate --checkpoint runs/x --tune-thresholds recall=0.9 --save" in said.lines[2]
    tuned = findings(metrics, 0.8, operating_point=OperatingPoint("tuned", tuned=True, rule="recall >= 0.9 per class"))
    assert "lower recall target" in tuned.lines[-1] and "--tune-thresholds" not in tuned.lines[-1]
    clean = findings(multilabel_metrics(targets[:, 1:2] * 0.9, targets[:, 1:2]), 0.8)
    assert clean.over_called == [] and clean.under_floor == [] and "nothing at this operating point" in clean.lines[-1]


def test_gallery_picks_the_most_confident_mistakes() -> None:
    scores, targets = _data(n=60, c=3, seed=4)
    thresholds = np.array([0.5, 0.6, 0.4])
    chosen = select_mistakes(scores, targets, thresholds, per_kind=2)
    for k in range(3):
        rows = range(len(scores))
        missed = sorted((scores[i, k], i) for i in rows if targets[i, k] == 1 and scores[i, k] < thresholds[k])
        alarms = sorted((-scores[i, k], i) for i in rows if targets[i, k] == 0 and scores[i, k] >= thresholds[k])
        assert chosen[k]["missed"] == [i for _, i in missed[:2]]
        assert chosen[k]["false alarm"] == [i for _, i in alarms[:2]]


class _Page(HTMLParser):
    """Text of the page in order, and the text of <p> paragraphs and <li> items."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.events: list[tuple[str, str]] = []  # (tag, text)

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        self.events.append((tag, ""))

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack:
            self.events.append((self.stack[-1], data))


def test_report_says_the_truth_first_with_intervals_glossary_and_curves(tmp_path) -> None:
    scores, targets = _data(n=120, c=4, seed=8)
    names = ["tumour", "stroma", "necrosis", "fat"]
    metrics = multilabel_metrics(scores, targets, class_names=names)
    log = [{"stage": "classifier", "epoch": e, "loss": 1.0 / e, "val_mAP": 40.0 + e} for e in range(1, 4)]
    result = assemble(scores, targets, names, 0.5, operating_point=OperatingPoint("0.5"), meta={"split": "test"})
    out = write_report(tmp_path / "rep", result, training_log=log)
    document = json.loads((out / "metrics.json").read_text())
    # metrics.json: the intervals of bootstrap_intervals at the report's thresholds, ECE of calibration_summary
    ci = bootstrap_intervals(scores, targets, 0.5)
    for row, want in zip(document["per_class"], ci["per_class"], strict=True):
        assert row["recall_ci"] == pytest.approx(want["recall_ci"]) and row["ap_ci"] == pytest.approx(want["ap_ci"])
        assert row["precision_ci"] == pytest.approx(want["precision_ci"])
    assert document["summary"]["mAP_ci"] == pytest.approx(ci["mAP_ci"])
    assert [r["ece"] for r in document["per_class"]] == pytest.approx(
        calibration_summary(scores, targets)["per_class_ece"]
    )
    assert document["findings"]["over_called"] == over_called(metrics)

    page = _Page()
    page.feed((out / "report.html").read_text())
    first = [text for tag, text in page.events if (tag in ("p", "b", "table", "h2") and text.strip()) or tag == "table"]
    assert first[0].startswith("Verdict:")  # one sentence first, then the findings, all before any table
    assert first[1].strip().startswith("the scores rank the images at mAP")
    assert first[2].startswith("Over-called") or first[2].startswith("Not over-called")
    # every number the tables show has a glossary line
    glossary = {text.strip() for tag, text in page.events if tag == "b"}
    for column in [*SUMMARY_KEYS, "ECE", "AP", "recall", "precision", "F1", "present", "called", "TP", "threshold"]:
        assert column in GLOSSARY and column in glossary, column
    # the per-class table shows each recall as "value (lo–hi)" with the bootstrap numbers
    cells = [text for tag, text in page.events if tag == "td"]
    for row in document["per_class"]:
        lo, hi = row["recall_ci"]
        assert f"{row['recall']:.1f} ({lo:.1f}–{hi:.1f})" in cells
    assert "recall % (95 % CI)" in PER_CLASS_COLUMNS
    assert (out / "training_curves.png").is_file() and (out / "calibration.png").is_file()
    images = [text for tag, text in page.events if tag == "h2"]
    assert images.index("Training curves") < images.index(FIGURES[3][1])
    assert "Not drawn" in (out / "report.md").read_text()  # no gallery without the images, and it says so


def test_add_statistics_keeps_the_metrics_and_adds_the_keys() -> None:
    scores, targets = _data()
    metrics = multilabel_metrics(scores, targets)
    full = add_statistics(metrics, scores, targets, resamples=20)
    assert "recall_ci" not in metrics["per_class"][0]  # not changed in place
    for row, plain in zip(full["per_class"], metrics["per_class"], strict=True):
        assert {k: row[k] for k in plain} == plain and {"recall_ci", "precision_ci", "ap_ci", "ece"} <= set(row)
    assert full["bootstrap"]["resamples"] == 20 and "reliability" in full["calibration"]


def test_no_bootstrap_gives_no_intervals_and_the_report_still_reads(tmp_path) -> None:
    scores, targets = _data()
    names = [f"c{i}" for i in range(4)]
    result = assemble(scores, targets, names, 0.5, operating_point=OperatingPoint("0.5"), resamples=0)
    metrics = result.metrics
    assert metrics["bootstrap"] is None and metrics["summary"]["mAP_ci"] is None
    assert all(r["recall_ci"] is None and r["ece"] is not None for r in metrics["per_class"])
    out = write_report(tmp_path / "rep", result)
    cells = (out / "per_class.csv").read_text().splitlines()[1].split(",")
    assert cells[2:4] == ["", ""]  # ap_lo, ap_hi empty
    assert "Intervals:" not in (out / "report.md").read_text()
