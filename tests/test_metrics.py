"""Metrics and thresholds against scikit-learn, hand-worked numbers and brute-force loops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
)

from probmcl_med.errors import DataError
from probmcl_med.evaluation import (
    FALLBACK_THRESHOLD,
    average_precision,
    multilabel_metrics,
    precision_recall_points,
    threshold_tradeoff,
    tune_thresholds,
)


def _data(n: int = 400, c: int = 9, seed: int = 0, positive_rate: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < positive_rate).astype(np.float64)
    scores = np.clip(rng.random((n, c)) * 0.7 + targets * rng.random((n, c)) * 0.4, 0, 1)
    return scores, targets


def _sklearn_reference(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict:
    """The paper's metrics assembled from scikit-learn pieces; preds built by an explicit per-class loop."""
    preds = np.zeros_like(targets, dtype=int)
    for c in range(targets.shape[1]):
        for i in range(targets.shape[0]):
            preds[i, c] = int(scores[i, c] >= thresholds[c])
    y = targets.astype(int)
    ap = np.array([average_precision_score(y[:, c], scores[:, c]) for c in range(y.shape[1])])
    p = precision_score(y, preds, average=None, zero_division=0)
    r = recall_score(y, preds, average=None, zero_division=0)
    f1 = f1_score(y, preds, average=None, zero_division=0)
    cp, cr = p.mean(), r.mean()
    return {
        "ap": ap,
        "precision": p,
        "recall": r,
        "f1": f1,
        "tp": ((preds == 1) & (y == 1)).sum(0),
        "mAP": ap.mean(),
        "CP": cp,
        "CR": cr,
        "CF1": 2 * cp * cr / (cp + cr),
        "OP": precision_score(y, preds, average="micro", zero_division=0),
        "OR": recall_score(y, preds, average="micro", zero_division=0),
        "OF1": f1_score(y, preds, average="micro", zero_division=0),
    }


def _assert_matches_sklearn(m: dict, ref: dict, atol: float = 1e-10) -> None:
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert m["summary"][key] == pytest.approx(100 * ref[key], abs=atol), key
    for field in ("ap", "precision", "recall", "f1"):
        ours = np.array([row[field] for row in m["per_class"]])
        np.testing.assert_allclose(ours, 100 * ref[field], rtol=0, atol=atol, err_msg=field)
    assert [row["tp"] for row in m["per_class"]] == ref["tp"].tolist()


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_matches_sklearn_random_and_tied_scores(decimals):
    """Random scores, and scores quantised to 2 and 1 decimals (many ties, which sklearn groups)."""
    scores, targets = _data()
    if decimals is not None:
        scores = np.round(scores, decimals)
        assert len(np.unique(scores)) <= 10**decimals + 1
    m = multilabel_metrics(scores, targets, threshold=0.5)
    _assert_matches_sklearn(m, _sklearn_reference(scores, targets, np.full(scores.shape[1], 0.5)))
    assert [row["support"] for row in m["per_class"]] == targets.sum(0).astype(int).tolist()
    assert [row["predicted"] for row in m["per_class"]] == (scores >= 0.5).sum(0).tolist()


def test_ties_grouped_like_sklearn_hand_example():
    # scores 0.5, 0.5, 0.5, 0.2 with labels 1, 0, 1, 1. sklearn enters the three tied samples together:
    # at 0.5: precision 2/3, recall 2/3; at 0.2: precision 3/4, recall 1. AP = 2/3 * 2/3 + 1/3 * 3/4 = 25/36.
    # (Breaking the tie with the positives first would give (1 + 1 + 3/4) / 3 = 11/12, several points high.)
    s = np.array([[0.5], [0.5], [0.5], [0.2]])
    t = np.array([[1.0], [0.0], [1.0], [1.0]])
    assert average_precision(s, t)[0] == pytest.approx(25 / 36, abs=1e-15)
    assert average_precision_score(t[:, 0], s[:, 0]) == pytest.approx(25 / 36, abs=1e-15)


def test_cf1_of1_hand_worked():
    # threshold 0.5, positive when score >= 0.5 (0.5 itself counts: class 2, sample 3)
    s = np.array([[0.9, 0.2, 0.6], [0.7, 0.8, 0.4], [0.3, 0.6, 0.7], [0.1, 0.4, 0.5]])
    t = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    # class 0: pred [1,1,0,0] vs [1,0,1,0]: TP 1, predicted 2, positives 2 -> P 1/2, R 1/2
    # class 1: pred [0,1,1,0] vs [0,1,1,0]: TP 2, predicted 2, positives 2 -> P 1,   R 1
    # class 2: pred [1,0,1,1] vs [1,0,0,1]: TP 2, predicted 3, positives 2 -> P 2/3, R 1
    # CP = (1/2 + 1 + 2/3) / 3 = 13/18; CR = (1/2 + 1 + 1) / 3 = 5/6
    # CF1 = 2 (13/18)(5/6) / (13/18 + 5/6) = (130/108) / (28/18) = 65/84  (not the mean of per-class F1, 23/30)
    # OP = 5/7, OR = 5/6, OF1 = 2 (5/7)(5/6) / (5/7 + 5/6) = 10/13
    # AP: class 0 ranks 1,0,1,0 -> (1 + 2/3)/2 = 5/6; class 1 -> 1; class 2 ranks 0,1,1,0 -> (1/2 + 2/3)/2 = 7/12
    # mAP = (5/6 + 1 + 7/12) / 3 = 29/36
    m = multilabel_metrics(s, t, threshold=0.5, class_names=["a", "b", "c"])
    expected = {"CP": 13 / 18, "CR": 5 / 6, "CF1": 65 / 84, "OP": 5 / 7, "OR": 5 / 6, "OF1": 10 / 13, "mAP": 29 / 36}
    for key, value in expected.items():
        assert m["summary"][key] == pytest.approx(100 * value, abs=1e-12), key
    assert [r["f1"] for r in m["per_class"]] == pytest.approx([50.0, 100.0, 80.0])
    assert [r["predicted"] for r in m["per_class"]] == [2, 2, 3]
    # the paper's "exceed" reading (>) would not count the 0.5: a threshold a hair above shows the difference
    assert multilabel_metrics(s, t, threshold=np.nextafter(0.5, 1))["per_class"][2]["predicted"] == 2


def test_class_without_positives_excluded_and_no_nan():
    scores, targets = _data(c=6, seed=3)
    targets[:, 4] = 0
    m = multilabel_metrics(scores, targets, class_names=[f"c{i}" for i in range(6)])
    assert m["excluded_from_map"] == [{"name": "c4", "reason": m["excluded_from_map"][0]["reason"]}]
    assert "no positive" in m["excluded_from_map"][0]["reason"]
    assert m["num_evaluated_classes"] == 5
    keep = [0, 1, 2, 3, 5]
    ref = _sklearn_reference(scores[:, keep], targets[:, keep], np.full(5, 0.5))
    for key in ("mAP", "CP", "CR", "CF1"):
        assert m["summary"][key] == pytest.approx(100 * ref[key], abs=1e-10)
    row = m["per_class"][4]
    assert row["ap"] is None and row["recall"] is None and row["f1"] is None and row["support"] == 0
    assert row["precision"] == 0.0  # it predicted something (scores reach 0.5) and every prediction is wrong
    # its false positives still count in OP: micro precision over all six classes
    preds = (scores >= 0.5).astype(int)
    op = precision_score(targets.astype(int), preds, average="micro", zero_division=0)
    assert m["summary"]["OP"] == pytest.approx(100 * op, abs=1e-10)
    json.dumps(m, allow_nan=False)  # no NaN or Inf anywhere


def test_never_called_class_has_no_precision_but_counts_zero_in_cp_and_all_negative_targets():
    scores, targets = _data(c=4, seed=5)
    scores[:, 1] = 0.1  # class 1 never predicted at 0.5
    m = multilabel_metrics(scores, targets)
    # precision of a class never called is undefined (n/a), not 0; CP still counts it as 0 (math.md s.10)
    assert m["per_class"][1]["predicted"] == 0 and m["per_class"][1]["precision"] is None
    cp = precision_score(targets.astype(int), (scores >= 0.5).astype(int), average="macro", zero_division=0)
    assert m["summary"]["CP"] == pytest.approx(100 * cp, abs=1e-10)
    m0 = multilabel_metrics(scores, np.zeros_like(targets))
    assert set(m0["summary"].values()) == {None}
    assert len(m0["excluded_from_map"]) == 4
    json.dumps(m0, allow_nan=False)


def test_per_class_thresholds_match_sklearn():
    scores, targets = _data(c=7, seed=7)
    thresholds = np.linspace(0.2, 0.8, 7)
    m = multilabel_metrics(scores, targets, threshold=thresholds)
    _assert_matches_sklearn(m, _sklearn_reference(scores, targets, thresholds))
    assert m["threshold"] == pytest.approx(thresholds.tolist())
    assert [r["threshold"] for r in m["per_class"]] == pytest.approx(thresholds.tolist())


def test_torch_inputs_give_the_same_numbers():
    scores, targets = _data(seed=11)
    a = multilabel_metrics(scores, targets)
    b = multilabel_metrics(torch.tensor(scores, dtype=torch.float64), torch.tensor(targets, dtype=torch.bool))
    assert a == b


def test_precision_recall_points_match_sklearn_curve():
    scores, targets = _data(seed=13)
    scores = np.round(scores, 2)
    for c, (recall, precision) in enumerate(precision_recall_points(scores, targets)):
        p_ref, r_ref, _ = precision_recall_curve(targets[:, c], scores[:, c])
        np.testing.assert_allclose(recall, r_ref[::-1], atol=1e-12)
        np.testing.assert_allclose(precision, p_ref[::-1], atol=1e-12)


@pytest.mark.parametrize(
    ("scores", "targets", "needle"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "shape"),
        (np.zeros(3), np.zeros(3), "2-D"),
        (np.array([[0.1, np.nan]]), np.array([[0, 1]]), "row 0, column 1"),
        (np.array([[0.1, np.inf]]), np.array([[0, 1]]), "finite"),
        (np.array([[0.1, 3.0]]), np.array([[0, 1]]), "sigmoid"),
        (np.array([[0.1, 0.2]]), np.array([[0, 2]]), "0 or 1"),
    ],
)
def test_bad_arrays_raise_data_error(scores, targets, needle):
    with pytest.raises(DataError, match=needle):
        multilabel_metrics(scores, targets)


def test_bad_threshold_and_names():
    scores, targets = _data(c=3)
    with pytest.raises(DataError, match="one per class"):
        multilabel_metrics(scores, targets, threshold=[0.5, 0.5])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        multilabel_metrics(scores, targets, threshold=1.5)
    with pytest.raises(DataError, match="2 names for 3"):
        multilabel_metrics(scores, targets, class_names=["a", "b"])


def _brute_force_threshold(scores: np.ndarray, targets: np.ndarray, target_recall: float) -> float:
    """Try every score the column holds (and 0); keep the highest whose recall (score >= t) meets the target."""
    best = None
    positives = targets.sum()
    for t in sorted(set(scores.tolist()) | {0.0}):
        tp = sum(1 for s, y in zip(scores, targets, strict=True) if y == 1 and s >= t)
        if tp / positives >= target_recall:
            best = t
    return best


@pytest.mark.parametrize("recall", [0.5, 0.8, 0.95, 1.0])
@pytest.mark.parametrize("decimals", [None, 1])
def test_tune_thresholds_brute_force(recall, decimals):
    scores, targets = _data(n=150, c=5, seed=17)
    if decimals is not None:
        scores = np.round(scores, decimals)
    targets[:, 3] = 0
    tuned = tune_thresholds(scores, targets, recall=recall)
    for c in range(5):
        if c == 3:
            assert tuned[c] == FALLBACK_THRESHOLD
            continue
        assert tuned[c] == _brute_force_threshold(scores[:, c], targets[:, c], recall)
    got = multilabel_metrics(scores, targets, threshold=tuned)
    assert all(r["recall"] >= 100 * recall - 1e-9 for r in got["per_class"] if r["recall"] is not None)


def test_tune_thresholds_exact_fraction_target():
    # 20 positives, recall 0.95 -> exactly 19 must be found (0.95 * 20 is not exactly 19 in floating point)
    pos = np.linspace(0.9, 0.05, 20)
    scores = np.concatenate([pos, [0.5, 0.3]])[:, None]
    targets = np.concatenate([np.ones(20), np.zeros(2)])[:, None]
    assert tune_thresholds(scores, targets, recall=0.95)[0] == pytest.approx(pos[18])
    with pytest.raises(DataError, match="recall target"):
        tune_thresholds(scores, targets, recall=0.0)


def test_threshold_tradeoff_against_sklearn():
    val_s, val_t = _data(seed=19)
    test_s, test_t = _data(seed=23)
    tuned = tune_thresholds(val_s, val_t, recall=0.9)
    out = threshold_tradeoff(test_s, test_t, tuned)
    p_tuned = precision_score(test_t, test_s >= tuned, average=None, zero_division=0)
    p_base = precision_score(test_t, test_s >= 0.5, average=None, zero_division=0)
    r_tuned = recall_score(test_t, test_s >= tuned, average=None, zero_division=0)
    np.testing.assert_allclose([r["precision_tuned"] for r in out["per_class"]], 100 * p_tuned, atol=1e-10)
    r_base = recall_score(test_t, test_s >= 0.5, average=None, zero_division=0)
    # a change is tuned minus 0.5: positive when the tuned thresholds raise the value
    np.testing.assert_allclose([r["precision_change"] for r in out["per_class"]], 100 * (p_tuned - p_base), atol=1e-10)
    np.testing.assert_allclose([r["recall_change"] for r in out["per_class"]], 100 * (r_tuned - r_base), atol=1e-10)
    np.testing.assert_allclose([r["recall_tuned"] for r in out["per_class"]], 100 * r_tuned, atol=1e-10)
    assert out["summary"]["tuned"]["CR"] > out["summary"]["baseline"]["CR"]
    json.dumps(out, allow_nan=False)


def test_tradeoff_words_follow_the_direction_of_the_change() -> None:
    """The issue's case: thresholds tuned above 0.5 raise precision and give up recall; the words and signs say so
    (the report used to print "CP 36.4 -> 52.0" under "precision cost" and a cost of -30.9)."""
    from probmcl_med.evaluation.thresholds import movement, tradeoff_sentence

    targets = np.array([[1], [1], [1], [1], [0], [0], [0], [0]], dtype=float)
    scores = np.array([[0.95], [0.9], [0.6], [0.55], [0.7], [0.6], [0.52], [0.1]])
    out = threshold_tradeoff(scores, targets, np.array([0.8]))
    row = out["per_class"][0]
    # at 0.5: 7 calls, 4 right (precision 57.1 %, recall 100 %); at 0.8: 2 calls, both right (100 %, 50 %)
    assert row["precision_baseline"] == pytest.approx(400 / 7) and row["precision_tuned"] == pytest.approx(100.0)
    assert row["precision_change"] == pytest.approx(100 - 400 / 7) and row["recall_change"] == pytest.approx(-50.0)
    sentence = tradeoff_sentence(out)
    assert "mean precision (CP) rises from 57.1 % to 100.0 % (+42.9 points)" in sentence
    assert "mean recall (CR) falls from 100.0 % to 50.0 % (-50.0 points)" in sentence
    assert movement("recall", 80.0, 80.0) == "recall stays at 80.0 %"
