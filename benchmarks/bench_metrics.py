"""multilabel_metrics against scikit-learn at MS-COCO val2014 size (40,504 images x 80 classes), in one run.

The scikit-learn side is what a user would write: a per-class ``average_precision_score`` loop plus
``precision_score`` / ``recall_score`` (average=None) on the thresholded predictions. Both sides see the same
scores; "tied" rounds them to 2 or 1 decimals (quantised outputs, where tie handling matters).

Run: ``python benchmarks/bench_metrics.py`` (add ``--repeats N``; the best of N runs is reported).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
from sklearn.metrics import average_precision_score, precision_score, recall_score

from probmcl_med.evaluation import multilabel_metrics

N, C = 40_504, 80


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def _sklearn(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ap = np.array([average_precision_score(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])
    preds = scores >= 0.5
    p = precision_score(targets, preds, average=None, zero_division=0)
    r = recall_score(targets, preds, average=None, zero_division=0)
    return ap, p, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    targets = (rng.random((N, C)) < 0.036).astype(np.float64)  # ~2.9 labels per image, as in MS-COCO
    scores = np.clip(rng.random((N, C)) * 0.7 + targets * rng.random((N, C)) * 0.5, 0.0, 1.0)

    header = (
        f"{'scores':<22}{'ours (s)':>10}{'sklearn (s)':>13}{'speed-up':>10}{'max |AP diff|':>15}{'max |P,R diff|':>16}"
    )
    print(f"multilabel_metrics vs scikit-learn, {N} x {C}, best of {args.repeats}, threshold 0.5 (score >= t)")
    print(header)
    print("-" * len(header))
    for label, data in (
        ("random (float64)", scores),
        ("tied (2 decimals)", np.round(scores, 2)),
        ("tied (1 decimal)", np.round(scores, 1)),
    ):
        ours_t, m = _best(lambda d=data: multilabel_metrics(d, targets), args.repeats)
        ref_t, (ap, p, r) = _best(lambda d=data: _sklearn(d, targets), args.repeats)
        ours_ap = np.array([row["ap"] for row in m["per_class"]]) / 100
        ours_p = np.array([row["precision"] for row in m["per_class"]]) / 100
        ours_r = np.array([row["recall"] for row in m["per_class"]]) / 100
        ap_diff = np.abs(ours_ap - ap).max()
        pr_diff = max(np.abs(ours_p - p).max(), np.abs(ours_r - r).max())
        print(f"{label:<22}{ours_t:>10.3f}{ref_t:>13.3f}{ref_t / ours_t:>9.1f}x{ap_diff:>15.1e}{pr_diff:>16.1e}")


if __name__ == "__main__":
    main()
