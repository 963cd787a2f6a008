"""The one typed evaluation result: its verdict against numbers computed by hand and by scikit-learn, the classes
whose thresholds could not be tuned, and the words for undefined numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from probmcl_med.evaluation import OperatingPoint, assemble
from probmcl_med.evaluation.thresholds import FALLBACK_THRESHOLD, tune_thresholds, tuning_coverage


def _data(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 4)) < np.array([0.3, 0.1, 0.5, 0.2])).astype(float)
    scores = np.clip(rng.random(targets.shape) * 0.7 + 0.35 * targets, 0, 1)
    return scores, targets


def test_verdict_states_the_ranking_with_its_interval_and_what_the_operating_point_does() -> None:
    scores, targets = _data()
    result = assemble(scores, targets, list("abcd"), 0.5, operating_point=OperatingPoint("0.5"), recall_floor=0.8)
    ap = [100 * average_precision_score(targets[:, k], scores[:, k]) for k in range(4)]
    called = scores >= 0.5
    found = 100 * recall_score(targets.ravel(), called.ravel())
    false_alarms = 100 - 100 * precision_score(targets.ravel(), called.ravel())
    recall = 100 * recall_score(targets, called, average=None)
    lo, hi = result.metrics["summary"]["mAP_ci"]
    chance = 100 * targets.mean()  # mean prevalence over the four classes: a random ranking's expected AP
    assert result.verdict == (
        f"**Verdict:** the scores rank the images at mAP {np.mean(ap):.1f} % (95 % CI {lo:.1f}–{hi:.1f}; a random "
        f"ranking scores about {chance:.0f} %); at threshold 0.5 for every class it finds {found:.0f} % of the true "
        f"labels and {false_alarms:.0f} % of its calls are false alarms, and {(recall < 80).sum()} of 4 classes are "
        "under the 80 % recall floor."
    )
    assert lo <= np.mean(ap) <= hi


def test_verdict_on_a_tiny_split_says_too_few_instead_of_an_interval() -> None:
    scores, targets = _data(n=6, seed=3)
    targets[0] = 1
    result = assemble(scores, targets, list("abcd"), 0.5, operating_point=OperatingPoint("0.5"))
    assert "n=6 images: too few for an interval" in result.verdict
    assert result.metrics["summary"]["mAP_ci"] is None


def test_untuned_and_few_positive_classes_are_counted_and_named() -> None:
    scores, targets = _data(n=120, seed=5)
    targets[:, 1] = 0  # no validation positive: cannot be tuned
    targets[:, 3] = 0
    targets[:4, 3] = 1  # 4 positives: tuned, but one image moves it
    tuned = tune_thresholds(scores, targets, recall=0.9)
    untuned, few = tuning_coverage(targets, list("abcd"))
    assert untuned == ("b",) and tuned[1] == FALLBACK_THRESHOLD
    positives = targets.sum(axis=0)
    assert few == tuple((name, int(p)) for name, p in zip("abcd", positives, strict=True) if 0 < p < 10) == (("d", 4),)
    op = OperatingPoint("tuned", tuned=True, rule="recall >= 0.9 per class", tuned_on="valid", untuned=untuned,
                        few_positives=few)  # fmt: skip
    result = assemble(scores, targets, list("abcd"), tuned, operating_point=op)
    lines = result.findings.lines
    assert lines[0].startswith("**Thresholds not tuned for 1 class(es)**") and lines[0].endswith("0.5: b.")
    assert lines[1].startswith("**Tuned on fewer than 10 positives**") and "d (n=4)" in lines[1]
    assert result.to_dict()["operating_point"]["untuned"] == ["b"]
    assert result.to_dict()["operating_point"]["few_positives"] == {"d": 4}


def test_a_class_never_called_has_no_precision_and_the_report_says_n_a(tmp_path) -> None:
    from probmcl_med.evaluation.render import per_class_rows

    scores, targets = _data()
    scores[:, 2] = 0.1  # class c is never called at 0.5
    result = assemble(scores, targets, list("abcd"), 0.5, operating_point=OperatingPoint("0.5"))
    row = result.metrics["per_class"][2]
    assert row["predicted"] == 0 and row["precision"] is None and row["precision_ci"] is None
    cells = {cells[1]: cells for _, cells in per_class_rows(result.metrics, 0.8)}
    assert cells["c"][3] == "n/a"
    assert result.metrics["summary"]["CP"] == pytest.approx(
        100 * precision_score(targets, scores >= 0.5, average="macro", zero_division=0)
    )  # CP keeps the paper's convention: a class never called counts 0
