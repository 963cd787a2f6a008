"""What a report says first: in words, what the model does at its operating point, and what to do about it.

Recall alone reads as reassurance when a model calls everything: a class called in 90 % of the images has high
recall whatever it looks at. So the first lines name

- **over-called** classes: called in at least :data:`OVERCALL_RATIO` times as many images as have the class (the
  predicted rate well above the prevalence), or called with a precision under the precision floor (default
  :data:`PRECISION_FLOOR`); a class without positives that is called at all is over-called;
- classes **under the recall floor** (the classes a pathologist reads first: a missed tissue type is a missed
  diagnosis);
- and **what to do**: at a fixed threshold, tune per-class thresholds on the validation split (the command to run);
  at tuned thresholds, what the remaining problems mean.

:data:`GLOSSARY` gives one line per number the report shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probmcl_med.core.metrics import below_recall_floor

PRECISION_FLOOR = 0.5
OVERCALL_RATIO = 1.5
MAX_LISTED = 12  # classes named in one sentence; the rest are counted

GLOSSARY: dict[str, str] = {
    "mAP": "mean over classes of AP: how well the scores rank images with a class above images without it, "
    "whatever the threshold (the paper's headline number).",
    "AP": "average precision of one class: the area under its precision-recall curve; 100 = every image with the "
    "class scored above every image without it; a random ranking scores about the class's prevalence.",
    "CP": "per-class precision, averaged over classes: of the images a class is called in, the share that have it.",
    "CR": "per-class recall, averaged over classes: of the images that have a class, the share it is called in.",
    "CF1": "harmonic mean of CP and CR.",
    "OP": "overall precision: correct calls / all calls, pooled over classes (frequent classes weigh more).",
    "OR": "overall recall: correct calls / all true labels, pooled over classes.",
    "OF1": "harmonic mean of OP and OR.",
    "recall": "of the images that have the class, the share in which the model calls it (a miss lowers it).",
    "precision": "of the images in which the model calls the class, the share that have it (a false alarm lowers it).",
    "F1": "harmonic mean of a class's precision and recall.",
    "present": "images that have the class (the ground truth; also called support).",
    "called": "images in which the model calls the class (score >= threshold).",
    "TP": "true positives: images that have the class and in which it is called.",
    "threshold": "the probability at or above which a class is called: the operating point.",
    "95 % CI": "the range holding the middle 95 % of the values over 1000 bootstrap resamples of the images: how "
    "far the number could move on another sample of the same size.",
    "ECE": "expected calibration error: the average gap between the predicted probability and how often the class "
    "is really there, over 10 probability bins (0 = a probability of 0.8 means 8 in 10).",
    "GMAC": "billions of multiply-accumulates to run encoder + head on one image (model cost; MACs = FLOPs / 2).",
    "over-called": f"called in at least {OVERCALL_RATIO:g} times as many images as have the class, or with "
    "precision under the precision floor.",
    "under floor": "recall under the recall floor (--recall-floor).",
}


@dataclass
class Findings:
    """The report's first lines, as data and as sentences.

    Attributes:
        over_called: names of the over-called classes, most over-called first.
        under_floor: names of the classes under the recall floor, lowest recall first.
        lines: the sentences, in order (markdown: ``**bold**`` and ``code`` spans).
    """

    over_called: list[str]
    under_floor: list[str]
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"over_called": self.over_called, "under_recall_floor": self.under_floor, "lines": self.lines}


def over_called(metrics: dict[str, Any], precision_floor: float = PRECISION_FLOOR) -> list[str]:
    """Names of the over-called classes (see the module docstring), the largest called/present ratio first."""
    rows = []
    for r in metrics["per_class"]:
        if r["predicted"] == 0:
            continue
        ratio = r["predicted"] / r["support"] if r["support"] else float("inf")
        if ratio >= OVERCALL_RATIO or r["precision"] < 100.0 * precision_floor:
            rows.append((-ratio, r["name"]))
    return [name for _, name in sorted(rows)]


def _named(names: list[str], describe: Any) -> str:
    shown = [describe(n) for n in names[:MAX_LISTED]]
    more = len(names) - len(shown)
    return "; ".join(shown) + (f"; and {more} more (see the table)" if more > 0 else "")


def _percent(n: int, total: int) -> str:
    return f"{100.0 * n / total:.0f} %" if total else "n/a"


def tune_command(checkpoint: str | None, recall_floor: float) -> str:
    """The command that tunes per-class thresholds on the validation split for a recall above the floor."""
    target = min(0.99, round(recall_floor + 0.1, 2))
    run = checkpoint or "RUN"
    return f"probmcl-med evaluate --checkpoint {run} --tune-thresholds recall={target:g} --save --split test"


def findings(
    metrics: dict[str, Any],
    recall_floor: float,
    precision_floor: float = PRECISION_FLOOR,
    operating_point: dict[str, Any] | None = None,
) -> Findings:
    """The report's first lines for ``metrics`` at the thresholds they were computed with.

    Args:
        metrics: :func:`~probmcl_med.core.metrics.multilabel_metrics` (percentages).
        recall_floor: a fraction; classes with recall under it are named.
        precision_floor: a fraction; classes called with precision under it are over-called.
        operating_point: what the thresholds are (``{"tuned": bool, "rule", "tuned_on", "same_split", "checkpoint",
            "description"}``; see :func:`probmcl_med.evaluation.run_eval.evaluate_checkpoint`); None: a fixed
            threshold of unknown origin.

    Returns:
        :class:`Findings`.
    """
    op = dict(operating_point or {})
    rows = {r["name"]: r for r in metrics["per_class"]}
    n = int(metrics["num_samples"])
    over = over_called(metrics, precision_floor)
    under = sorted(below_recall_floor(metrics, recall_floor), key=lambda name: rows[name]["recall"])
    floor_p, floor_r = f"{100 * precision_floor:g} %", f"{100 * recall_floor:g} %"
    lines = []
    if op.get("same_split"):
        lines.append(
            f"**Caution:** the thresholds were tuned on this very split ({op.get('tuned_on')}): the recall and "
            "precision below are optimistic. Read the test split for numbers that carry over."
        )
    if over:

        def describe_over(name: str) -> str:
            r = rows[name]
            return (
                f"{name} (called in {_percent(r['predicted'], n)} of images, present in {_percent(r['support'], n)}, "
                f"precision {r['precision']:.0f} %)"
            )

        lines.append(
            f"**Over-called: {len(over)} of {len(rows)} classes** are called in at least {OVERCALL_RATIO:g} times as "
            f"many images as have them, or with a precision under {floor_p}, so many of their calls are false alarms: "
            + _named(over, describe_over)
            + "."
        )
    else:
        lines.append(
            f"**Not over-called:** no class is called in {OVERCALL_RATIO:g} times as many images as have it, and "
            f"every class that is called has a precision of at least {floor_p}."
        )
    if under:
        lines.append(
            f"**Under the recall floor of {floor_r}: {len(under)} class(es)**, these images are missed most: "
            + _named(under, lambda name: f"{name} (recall {rows[name]['recall']:.0f} %)")
            + "."
        )
    else:
        caveat = " (recall is easy when a class is called everywhere: see the over-called classes)" if over else ""
        lines.append(f"**Recall floor of {floor_r}:** every class with a positive reaches it{caveat}.")
    if not over and not under:
        lines.append("**What to do:** nothing at this operating point; check the intervals in the table.")
    elif not op.get("tuned"):
        lines.append(
            "**What to do:** these numbers are at a fixed threshold for every class. Choose per-class thresholds on "
            "the validation split for the recall you need, and read the test split at them: "
            f"`{tune_command(op.get('checkpoint'), recall_floor)}` (add `--report DIR` for this report at the tuned "
            "operating point; `--save` writes thresholds.json beside model.pt for predict and explain)."
        )
    else:
        advice = [f"**What to do:** the thresholds hold {op.get('rule', 'the recall target')} on the "
                  f"{op.get('tuned_on', 'validation')} split."]  # fmt: skip
        if under:
            advice.append(
                "Classes under the floor here lost recall between that split and this one: too few validation "
                "positives to set their threshold, or a shift between the splits; check their intervals."
            )
        if over:
            advice.append(
                "The over-calls that remain are the precision this model pays for that recall: a lower recall target "
                "calls less; a better model (more data, longer training) is the other way."
            )
        lines.append(" ".join(advice))
    return Findings(over, under, lines)
