"""Report figures as PNG bytes: per-class recall/precision bars, precision-recall curves, reliability diagram,
training curves, label co-occurrence.

Figures are built on :class:`matplotlib.figure.Figure` and rendered by the Agg backend directly, without pyplot:
nothing here touches matplotlib's global backend or figure registry, so the functions are safe in notebooks,
threads and headless servers alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from probmcl_med.core.losses import LOSS_TERMS
from probmcl_med.core.metrics import precision_recall_points, sorted_by_recall

FLOOR_COLOR = "#c62828"  # classes under the recall floor
OK_COLOR = "#1565c0"
PRECISION_COLOR = "#607d8b"
LOW_PRECISION_COLOR = "#ef6c00"  # classes under the precision floor
VALIDATION_KEYS = ("val_mAP", "val_CF1", "val_OF1")
BAR_INCHES = 0.22  # height per class in the bar chart
MAX_CURVE_POINTS = 400  # points kept per precision-recall curve; the curve's shape is unchanged at plot size


def _png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _label_size(inches_per_label: float) -> float:
    """A tick-label font size (points) that fits the space each label gets."""
    return float(np.clip(0.55 * 72 * inches_per_label, 4.0, 10.0))


def _whiskers(rows: list[dict[str, Any]], key: str, values: np.ndarray) -> np.ndarray | None:
    """(2, K) distances from each value to its CI ends (matplotlib's xerr), or None when any row lacks the CI."""
    cis = [r.get(f"{key}_ci") for r in rows]
    if not cis or any(ci is None for ci in cis):
        return None
    lo, hi = np.array(cis, dtype=np.float64).T
    return np.stack([np.clip(values - lo, 0, None), np.clip(hi - values, 0, None)])


def recall_precision_bars(metrics: dict[str, Any], recall_floor: float, precision_floor: float = 0.5) -> bytes:
    """Horizontal bars of per-class recall and precision, sorted by recall (worst on top), the floors marked.

    Args:
        metrics: the dict from :func:`.metrics.multilabel_metrics` (percentages), with ``recall_ci`` and
            ``precision_ci`` per class when bootstrap intervals were added (drawn as whiskers).
        recall_floor: a fraction in [0, 1]; classes whose recall is under it are drawn red.
        precision_floor: a fraction in [0, 1]; classes whose precision is under it are drawn orange.

    Returns:
        PNG bytes.
    """
    rows = [r for r in sorted_by_recall(metrics) if r["recall"] is not None][::-1]  # barh draws bottom-up
    names = [r["name"] for r in rows]
    recall = np.array([r["recall"] for r in rows])
    precision = np.array([r["precision"] for r in rows])
    floor, p_floor = 100.0 * recall_floor, 100.0 * precision_floor
    height = max(2.8, BAR_INCHES * len(rows) + 1.5)
    fig = Figure(figsize=(10, height))
    ax_r, ax_p = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(rows))
    err_r, err_p = _whiskers(rows, "recall", recall), _whiskers(rows, "precision", precision)
    whisker = {"ecolor": "#333333", "capsize": 2, "error_kw": {"linewidth": 0.8}}
    ax_r.barh(y, recall, color=np.where(recall < floor, FLOOR_COLOR, OK_COLOR), xerr=err_r, **whisker)
    ax_r.axvline(floor, color=FLOOR_COLOR, linestyle="--", linewidth=1)
    ax_p.barh(y, precision, color=np.where(precision < p_floor, LOW_PRECISION_COLOR, PRECISION_COLOR), xerr=err_p,
              **whisker)  # fmt: skip
    ax_p.axvline(p_floor, color=LOW_PRECISION_COLOR, linestyle=":", linewidth=1.2)
    ax_r.set_title(f"Recall: red bars under the {floor:g} % floor (dashed line)", fontsize=10)
    ax_p.set_title(f"Precision: orange bars under {p_floor:g} % (dotted line)", fontsize=10)
    ax_r.set_yticks(y, names, fontsize=_label_size(BAR_INCHES))
    for label, r in zip(ax_r.get_yticklabels(), recall, strict=True):
        if r < floor:
            label.set_color(FLOOR_COLOR)
    for ax in (ax_r, ax_p):
        ax.set_xlim(0, 100)
        ax.set_xlabel("%" + (", whiskers: 95 % bootstrap interval" if err_r is not None else ""))
        ax.grid(axis="x", alpha=0.3)
    ax_r.set_ylim(-0.6, len(rows) - 0.4)
    return _png(fig)


def reliability_diagram(calibration: dict[str, Any], class_names: Sequence[str]) -> bytes:
    """Left: the pooled reliability diagram (observed positive rate against mean predicted probability per bin,
    the diagonal = perfect calibration, bar heights below = images per bin). Right: ECE per class.

    Args:
        calibration: :func:`probmcl_med.evaluation.calibration.calibration_summary` (percent).
        class_names: C names, in the order of ``per_class_ece``.

    Returns:
        PNG bytes.
    """
    c = len(class_names)
    fig = Figure(figsize=(11, max(4.2, 0.22 * c + 1.5)))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1), width_ratios=(1, 1), hspace=0.08, wspace=0.45)
    ax, ax_count, ax_ece = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[:, 1])
    table = calibration["reliability"]
    used = [b for b in table if b["count"] > 0]
    ax.plot([0, 100], [0, 100], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot([b["mean_score"] for b in used], [b["positive_rate"] for b in used], "o-", color=OK_COLOR,
            label="this model (all classes pooled)")  # fmt: skip
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_ylabel("images that have the class, %")
    ax.set_title(f"Reliability, all classes pooled (ECE {calibration['ece']:.1f} %)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    centres = [100 * (b["lo"] + b["hi"]) / 2 for b in table]
    ax_count.bar(centres, [b["count"] for b in table], width=100 / len(table) * 0.9, color=PRECISION_COLOR)
    ax_count.set_xlim(0, 100)
    ax_count.yaxis.set_major_locator(MaxNLocator(3, integer=True))
    ax_count.set_xlabel("predicted probability, % (bins of 10)")
    ax_count.set_ylabel("pairs", fontsize=8)
    ece = np.array(calibration["per_class_ece"])
    order = np.argsort(ece)
    y = np.arange(c)
    ax_ece.barh(y, ece[order], color=OK_COLOR)
    ax_ece.set_yticks(y, [class_names[i] for i in order], fontsize=_label_size(BAR_INCHES))
    ax_ece.set_ylim(-0.6, c - 0.4)
    ax_ece.set_xlabel("ECE, % (0 = calibrated)")
    ax_ece.set_title("ECE per class, largest on top", fontsize=10)
    ax_ece.grid(axis="x", alpha=0.3)
    return _png(fig)


def training_curves(records: Sequence[dict[str, Any]]) -> bytes:
    """Per training stage, the loss terms per epoch (left) and the validation metrics per epoch (right).

    Args:
        records: the lines of a run's ``metrics.jsonl`` (``stage``, ``epoch``, the loss terms of
            :data:`~probmcl_med.core.losses.LOSS_TERMS`, validation ``val_mAP``, ``val_CF1``, ``val_OF1``).

    Returns:
        PNG bytes: one row per stage.
    """
    stages = list(dict.fromkeys(str(r.get("stage", "training")) for r in records))
    fig = Figure(figsize=(10, 2.8 * len(stages) + 0.4), layout="constrained")
    axes = fig.subplots(len(stages), 2, squeeze=False)
    for (ax_loss, ax_val), stage in zip(axes, stages, strict=True):
        rows = sorted((r for r in records if str(r.get("stage", "training")) == stage), key=lambda r: r["epoch"])
        epochs = [r["epoch"] for r in rows]
        for key in LOSS_TERMS:
            if any(isinstance(r.get(key), int | float) for r in rows):
                ax_loss.plot(epochs, [r.get(key, np.nan) for r in rows], "o-", markersize=3, label=key)
        ax_loss.set_title(f"{stage}: training loss per epoch", fontsize=10)
        for ax in (ax_loss, ax_val):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_loss.set_xlabel("epoch")
        ax_loss.legend(fontsize=8)
        ax_loss.grid(alpha=0.3)
        keys = [k for k in VALIDATION_KEYS if any(isinstance(r.get(k), int | float) for r in rows)]
        for key in keys:
            ax_val.plot(epochs, [r.get(key, np.nan) for r in rows], "o-", markersize=3, label=key.removeprefix("val_"))
        if keys:
            ax_val.set_title(f"{stage}: validation split per epoch (%)", fontsize=10)
            ax_val.set_xlabel("epoch")
            ax_val.legend(fontsize=8)
            ax_val.grid(alpha=0.3)
        else:
            ax_val.set_axis_off()
            ax_val.text(0.5, 0.5, f"{stage}: no validation metrics recorded", ha="center", va="center", fontsize=9,
                        color="gray")  # fmt: skip
    return _png(fig)


def _thin(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most MAX_CURVE_POINTS points, evenly spaced along the curve, always the first and last."""
    if recall.size <= MAX_CURVE_POINTS:
        return recall, precision
    keep = np.unique(np.linspace(0, recall.size - 1, MAX_CURVE_POINTS).round().astype(int))
    return recall[keep], precision[keep]


def precision_recall_grid(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str], metrics: dict[str, Any] | None = None
) -> bytes:
    """One small precision-recall panel per class (a readable grid for tens of classes), AP in each title.

    Args:
        scores: (N, C) probabilities.
        targets: (N, C) 0/1 labels.
        class_names: C names.
        metrics: optional metrics dict; when given, each panel's title shows the class AP and a dot marks the
            operating point at the class threshold.

    Returns:
        PNG bytes. A class without positives gets an empty panel saying so.
    """
    curves = precision_recall_points(np.asarray(scores, np.float64), np.asarray(targets, np.float64))
    c = len(curves)
    cols = min(c, 8)
    rows = math.ceil(c / cols)
    width, height = 2.1 * cols + 0.6, 2.1 * rows + 1.2
    fig = Figure(figsize=(width, height))
    # margins in inches, so that titles and labels sit the same whatever the number of rows
    fig.subplots_adjust(
        left=0.6 / width, right=1 - 0.1 / width, top=1 - 0.9 / height, bottom=0.6 / height, hspace=0.55, wspace=0.12
    )
    # no sharex/sharey: sharing costs time quadratic in the number of axes (tens of seconds at 80 classes)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    per_class = metrics["per_class"] if metrics is not None else [None] * c
    for ax, name, (recall, precision), row in zip(axes, class_names, curves, per_class, strict=False):
        if recall.size == 0:
            ax.text(0.5, 0.5, "no positives", ha="center", va="center", fontsize=7, color="gray")
            ax.set_title(str(name), fontsize=7)
            continue
        r, p = _thin(recall, precision)
        ax.step(r, p, where="post", color=OK_COLOR, linewidth=1)
        title = str(name) if row is None else f"{name}\nAP {row['ap']:.1f}"
        if row is not None:
            ax.plot(row["recall"] / 100, row["precision"] / 100, "o", color=FLOOR_COLOR, markersize=3)
        ax.set_title(title, fontsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[c:]:
        ax.set_visible(False)
    for i, ax in enumerate(axes):
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xticks((0, 0.5, 1))
        ax.set_yticks((0, 0.5, 1))
        ax.tick_params(labelsize=6, labelleft=i % cols == 0, labelbottom=i + cols >= c)
    fig.supxlabel("recall", y=0.1 / height)
    fig.supylabel("precision", x=0.1 / width)
    fig.suptitle("Precision-recall per class (dot: operating point at the threshold)", fontsize=10, y=1 - 0.2 / height)
    return _png(fig, dpi=90)


def cooccurrence(matrix: np.ndarray) -> np.ndarray:
    """Row-normalised label co-occurrence: entry (i, j) = P(label j | label i) = count(i and j) / count(i).

    Args:
        matrix: (N, C) 0/1 labels or predictions.

    Returns:
        (C, C) values in [0, 1]; a row whose label never occurs is all zeros.
    """
    m = np.asarray(matrix, np.float64)
    counts = m.T @ m
    diag = np.diag(counts)[:, None]
    return np.divide(counts, diag, out=np.zeros_like(counts), where=diag > 0)


def cooccurrence_heatmaps(targets: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Ground-truth and predicted label co-occurrence side by side, P(column label | row label), one colour scale.

    The diagonal (always 1) is left blank so that the colour scale spans the off-diagonal values, where the
    structure is.

    Args:
        targets: (N, C) 0/1 labels.
        predictions: (N, C) 0/1 thresholded predictions.
        class_names: C names.

    Returns:
        PNG bytes.
    """
    c = len(class_names)
    panels = [cooccurrence(targets), cooccurrence(predictions)]
    off_diagonal = ~np.eye(c, dtype=bool)
    vmax = max(1e-6, *(float(p[off_diagonal].max()) if c > 1 else 0.0 for p in panels))
    side = float(np.clip(0.16 * c + 2.5, 4.5, 14))
    fig = Figure(figsize=(2 * side + 1.2, side + 0.6), layout="constrained")
    axes = fig.subplots(1, 2)
    size = _label_size(0.85 * side / c)
    image = None
    for ax, data, title in zip(axes, panels, ("Ground truth", "Predicted (at the threshold)"), strict=True):
        shown = np.where(off_diagonal, data, np.nan)
        image = ax.imshow(shown, vmin=0, vmax=vmax, cmap="viridis", interpolation="nearest")
        ax.set_title(f"{title}: P(column | row), diagonal blank", fontsize=10)
        ax.set_xticks(range(c), class_names, rotation=90, fontsize=size)
        ax.set_yticks(range(c), class_names, fontsize=size)
    fig.colorbar(image, ax=axes, shrink=0.8)
    return _png(fig, dpi=90)
