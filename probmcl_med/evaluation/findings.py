"""What a report says first: in words, what the model does at its operating point, and what to do about it.

The very first line is the **verdict** (:func:`verdict`): one sentence with how well the scores rank (mAP, its
interval, and what a random ranking would score) and what the operating point does (the share of true labels found,
the share of calls that are false alarms, the classes under the recall floor).

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
from probmcl_med.evaluation.thresholds import FALLBACK_THRESHOLD, FEW_POSITIVES, OperatingPoint

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
    "95 % CI": "the range holding the middle 95 % of the values over bootstrap resamples of the images (how many: "
    "under the summary): how far the number could move on another sample of the same size.",
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


def _interval_words(metrics: dict[str, Any]) -> str:
    """The mAP's interval in words, or why there is none."""
    ci = metrics["summary"].get("mAP_ci")
    if ci is not None:
        return f"95 % CI {ci[0]:.1f}–{ci[1]:.1f}"
    method = metrics.get("bootstrap")
    if not method:
        return "no interval computed"
    n = int(metrics["num_samples"])
    if n < int(method.get("min_count", 0)):
        return f"n={n} images: too few for an interval"
    return "no interval"


def verdict(metrics: dict[str, Any], recall_floor: float, operating_point: OperatingPoint | None = None) -> str:
    """The one sentence a report opens with: how good the ranking is and what the operating point does.

    Args:
        metrics: :func:`~probmcl_med.core.metrics.multilabel_metrics` with the statistics of
            :func:`~probmcl_med.evaluation.report.add_statistics` (for the mAP interval).
        recall_floor: a fraction; the classes under it are counted.
        operating_point: what the thresholds are; None: a fixed threshold of unknown origin.

    Returns:
        ``**Verdict:** the scores rank ... at mAP 72.1 % (95 % CI 65.3–78.0; a random ranking scores about 14 %); at
        threshold 0.5 for every class it finds 95 % of the true labels and 55 % of its calls are false alarms, and
        2 of 10 classes are under the 80 % recall floor.`` The chance level is the mean prevalence of the evaluated
        classes (the AP of a random ranking, in expectation).
    """
    summary, rows = metrics["summary"], metrics["per_class"]
    n = int(metrics["num_samples"])
    if summary["mAP"] is None:
        return (
            "**Verdict:** nothing to rank: no class has a positive image in this split, so mAP and recall are "
            "undefined; only the false alarms can be counted."
        )
    evaluated = [r for r in rows if r["support"] > 0]
    chance = 100.0 * sum(r["support"] for r in evaluated) / (n * len(evaluated))
    ranking = (
        f"the scores rank the images at mAP {summary['mAP']:.1f} % ({_interval_words(metrics)}; a random ranking "
        f"scores about {chance:.0f} %)"
    )
    if operating_point is not None and operating_point.tuned:
        where = f"at the tuned per-class thresholds ({operating_point.rule or 'tuned'})"
    elif isinstance(metrics["threshold"], list):
        where = "at its per-class thresholds"
    else:
        where = f"at threshold {metrics['threshold']:g} for every class"
    if sum(r["predicted"] for r in rows) == 0:
        calls = "it calls no class in any image"
    else:
        calls = f"it finds {summary['OR']:.0f} % of the true labels and {100.0 - summary['OP']:.0f} % of its calls are false alarms"
    under = below_recall_floor(metrics, recall_floor)
    floor = f"{100 * recall_floor:g} %"
    if under:
        floors = f"{len(under)} of {len(evaluated)} classes are under the {floor} recall floor"
    else:
        floors = f"every class with a positive reaches the {floor} recall floor"
    return f"**Verdict:** {ranking}; {where} {calls}, and {floors}."


def same_split_warning(op: OperatingPoint) -> str | None:
    """The warning for thresholds tuned on the evaluated split, or None."""
    if not op.same_split:
        return None
    return (
        f"the thresholds were tuned on the {op.tuned_on} split and this evaluation reads the same split: its recall "
        "and precision are optimistic; evaluate --split test for numbers that carry over"
    )


def _tuning_lines(op: OperatingPoint) -> list[str]:
    """The classes whose thresholds could not be tuned, or were tuned on few positives."""
    lines = []
    split = op.tuned_on or "validation"
    if op.untuned:
        lines.append(
            f"**Thresholds not tuned for {len(op.untuned)} class(es)**: no positive image in the {split} split, so "
            f"their threshold stayed at {FALLBACK_THRESHOLD:g}: " + _named(list(op.untuned), str) + "."
        )
    if op.few_positives:
        lines.append(
            f"**Tuned on fewer than {FEW_POSITIVES} positives** in the {split} split, so one image can move the "
            "threshold: " + _named([f"{name} (n={count})" for name, count in op.few_positives], str) + "."
        )
    return lines


def findings(
    metrics: dict[str, Any],
    recall_floor: float,
    precision_floor: float = PRECISION_FLOOR,
    operating_point: OperatingPoint | None = None,
) -> Findings:
    """The report's first lines for ``metrics`` at the thresholds they were computed with.

    Args:
        metrics: :func:`~probmcl_med.core.metrics.multilabel_metrics` (percentages).
        recall_floor: a fraction; classes with recall under it are named.
        precision_floor: a fraction; classes called with precision under it are over-called.
        operating_point: what the thresholds are; None: a fixed threshold of unknown origin.

    Returns:
        :class:`Findings`.
    """
    op = operating_point or OperatingPoint(description="")
    rows = {r["name"]: r for r in metrics["per_class"]}
    n = int(metrics["num_samples"])
    over = over_called(metrics, precision_floor)
    under = sorted(below_recall_floor(metrics, recall_floor), key=lambda name: rows[name]["recall"])
    floor_p, floor_r = f"{100 * precision_floor:g} %", f"{100 * recall_floor:g} %"
    lines = _tuning_lines(op)
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
    elif not op.tuned:
        lines.append(
            "**What to do:** these numbers are at a fixed threshold for every class. Choose per-class thresholds on "
            "the validation split for the recall you need, and read the test split at them: "
            f"`{tune_command(op.checkpoint, recall_floor)}` (add `--report DIR` for this report at the tuned "
            "operating point; `--save` writes thresholds.json beside model.pt for predict and explain)."
        )
    else:
        advice = [f"**What to do:** the thresholds hold {op.rule or 'the recall target'} on the "
                  f"{op.tuned_on or 'validation'} split."]  # fmt: skip
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
