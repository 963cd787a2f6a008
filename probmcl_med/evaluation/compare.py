"""Two or more models on the same images: the paper's metrics side by side and the differences with their
uncertainty. Does a plugin, a mode or a setting help on my data?

::

    comparison = compare_runs(["runs/asl", "runs/probmcl"], split="test")
    write_comparison("cmp/", comparison)          # cmp/compare.html, cmp/compare.json, cmp/compare.md
    comparison.deltas[0]["delta_mAP"], comparison.deltas[0]["delta_mAP_ci"], comparison.deltas[0]["delta_mAP_p"]

The first model is the reference; every other model is set against it (B minus A, in percentage points): mAP with a
95 % paired bootstrap interval and p-value over images, per-class AP likewise (:mod:`.paired`), and the threshold
metrics (CP, CR, CF1, OP, OR, OF1) at each model's own operating point (its ``thresholds.json``, else 0.5, or
``threshold`` for every model) as plain differences. Runs are scored on the split of their dataset
(:func:`~probmcl_med.evaluation.run_eval.score_split`); they must hold the same images with the same labels, or
the comparison is refused in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.bundle import load_model_bundle, resolve_bundle_path
from probmcl_med.core.metrics import SUMMARY_KEYS, multilabel_metrics
from probmcl_med.devices import resolve_device
from probmcl_med.errors import DataError
from probmcl_med.evaluation.bootstrap import RESAMPLES
from probmcl_med.evaluation.io import load_scores_targets
from probmcl_med.evaluation.paired import paired_ap_difference
from probmcl_med.evaluation.run_eval import score_split
from probmcl_med.evaluation.statistics import add_statistics
from probmcl_med.inference.loop import ProgressHook
from probmcl_med.inference.predict import decision_thresholds, describe_thresholds
from probmcl_med.operating_point import DEFAULT_THRESHOLD


@dataclass(frozen=True)
class ComparedModel:
    """One model's scores on the shared images.

    Attributes:
        label: a short unique name (the run folder's or the scores file's name).
        source: the run folder or scores file.
        scores: (N, C) probabilities.
        thresholds: (C,) its operating point.
        thresholds_from: where the thresholds come from, in words.
    """

    label: str
    source: str
    scores: np.ndarray
    thresholds: np.ndarray
    thresholds_from: str


@dataclass(frozen=True)
class Comparison:
    """Models side by side on the same images, and each against the first.

    Attributes:
        models: the models, the reference first.
        targets: (N, C) the shared 0/1 labels.
        class_names: C names.
        split: the split or targets file the images come from, in words.
        metrics: per model, :func:`~probmcl_med.core.metrics.multilabel_metrics` at its thresholds with its mAP
            interval (:func:`~probmcl_med.evaluation.statistics.add_statistics`).
        deltas: per model after the first, :func:`~probmcl_med.evaluation.paired.paired_ap_difference` against the
            reference plus ``model``, ``reference`` and ``delta_summary`` (B - A of CP ... OF1, points).
    """

    models: tuple[ComparedModel, ...]
    targets: np.ndarray
    class_names: tuple[str, ...]
    split: str
    metrics: tuple[dict[str, Any], ...]
    deltas: tuple[dict[str, Any], ...]

    @property
    def reference(self) -> ComparedModel:
        return self.models[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``compare.json`` (differences under keys named ``delta...``)."""
        return {
            "split": self.split,
            "num_samples": int(self.targets.shape[0]),
            "class_names": list(self.class_names),
            "support": [int(x) for x in self.targets.sum(axis=0)],
            "reference": self.reference.label,
            "models": [
                {
                    "label": m.label,
                    "source": m.source,
                    "thresholds_from": m.thresholds_from,
                    "thresholds": [float(x) for x in m.thresholds],
                    "summary": metrics["summary"],
                    "per_class": [
                        {k: row[k] for k in ("name", "ap", "ap_ci", "precision", "recall", "f1")}
                        for row in metrics["per_class"]
                    ],
                }
                for m, metrics in zip(self.models, self.metrics, strict=True)
            ],
            "comparisons": list(self.deltas),
        }


def unique_labels(names: Sequence[str]) -> list[str]:
    """``["a", "b", "a"]`` -> ``["a", "b", "a (2)"]``: each label once."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def compare(
    models: Sequence[ComparedModel],
    targets: np.ndarray,
    class_names: Sequence[str],
    split: str,
    *,
    resamples: int = RESAMPLES,
) -> Comparison:
    """Metrics of each model and the paired differences of each against the first.

    Raises:
        DataError: fewer than two models, or scores that do not match the targets' shape.
    """
    if len(models) < 2:
        raise DataError("compare needs at least two models (runs or --scores files)")
    names = tuple(str(n) for n in class_names)
    metrics = tuple(
        add_statistics(multilabel_metrics(m.scores, targets, m.thresholds, names), m.scores, targets,
                       resamples=resamples)
        for m in models
    )  # fmt: skip
    reference = models[0]
    deltas = []
    for model, m in zip(models[1:], metrics[1:], strict=True):
        diff = paired_ap_difference(reference.scores, model.scores, targets, resamples=resamples)
        for row, name, support in zip(diff["per_class"], names, targets.sum(axis=0), strict=True):
            row.update(name=name, support=int(support))
        base = metrics[0]["summary"]
        delta_summary = {
            key: None if m["summary"][key] is None or base[key] is None else m["summary"][key] - base[key]
            for key in SUMMARY_KEYS
            if key != "mAP"
        }
        deltas.append({"model": model.label, "reference": reference.label, **diff, "delta_summary": delta_summary})
    return Comparison(tuple(models), targets, names, split, metrics, tuple(deltas))


def compare_runs(
    runs: Sequence[str | Path],
    split: str = "test",
    *,
    threshold: float | None = None,
    resamples: int = RESAMPLES,
    batch_size: int = 64,
    device: Any = "auto",
    workers: int = 0,
    root: str | None = None,
    progress: ProgressHook | None = None,
) -> Comparison:
    """Score ``split`` with each run's model and compare them (the first run is the reference).

    Args:
        runs: run folders (or their ``model.pt``), two or more.
        split: train, valid or test of the runs' dataset.
        threshold: one threshold for every class of every model; None: each run's own (``thresholds.json``, else
            0.5).
        resamples: bootstrap resamples for the intervals and p-values.
        batch_size, device, workers, root, progress: as in :func:`~probmcl_med.evaluation.run_eval.score_split`.

    Raises:
        DataError: fewer than two runs; runs whose split holds other images, labels or classes than the first's.
        CheckpointError: a missing or unreadable run.
    """
    if len(runs) < 2:
        raise DataError("compare needs at least two runs, e.g. probmcl-med compare runs/a runs/b")
    dev = resolve_device(device)
    paths = [resolve_bundle_path(r, option="RUN folder") for r in runs]
    labels = unique_labels([p.parent.name for p in paths])
    models, scored = [], []
    for path, label in zip(paths, labels, strict=True):
        bundle = load_model_bundle(path, device=dev)
        split_scores = score_split(bundle, split, checkpoint=path, batch_size=batch_size, device=dev,
                                   workers=workers, root=root, progress=progress)  # fmt: skip
        scored.append((path, split_scores, list(bundle.class_names)))
        _check_same_images(scored[0], scored[-1], split)
        models.append(
            ComparedModel(label, str(path.parent), split_scores.scores, decision_thresholds(bundle, threshold),
                          describe_thresholds(bundle, threshold))
        )  # fmt: skip
    _, first, names = scored[0]
    return compare(models, first.targets, names, f"{split} split of {first.source}", resamples=resamples)


def _check_same_images(first: tuple[Path, Any, list[str]], other: tuple[Path, Any, list[str]], split: str) -> None:
    (path_a, a, names_a), (path_b, b, names_b) = first, other
    where = f"the {split} split of {path_b.parent} and of {path_a.parent}"
    if names_a != names_b:
        raise DataError(f"{where} have other classes ({len(names_b)} vs {len(names_a)}, or in another order): "
                        "compare models trained on the same classes")  # fmt: skip
    same = a.scores.shape == b.scores.shape and np.array_equal(a.targets, b.targets)
    if same and a.indices is not None and b.indices is not None:
        same = np.array_equal(a.indices, b.indices)
    if not same:
        raise DataError(f"{where} hold different images or labels ({len(b.scores)} vs {len(a.scores)} images): "
                        "compare runs of the same dataset and split, or use --scores with one --targets")  # fmt: skip


def compare_score_files(
    scores: Sequence[str | Path],
    targets: str | Path,
    *,
    threshold: float | None = None,
    resamples: int = RESAMPLES,
) -> Comparison:
    """Compare saved probabilities of two or more models against one targets file (the first file is the reference).

    Raises:
        DataError: fewer than two files; a bad file (one line naming it); files with other class names.
    """
    if len(scores) < 2:
        raise DataError("compare needs at least two --scores files and one --targets file")
    value = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    said = f"{value:g} for every class" + (" (default)" if threshold is None else " (--threshold)")
    labels = unique_labels([Path(s).stem for s in scores])
    loaded = [load_scores_targets(path, targets) for path in scores]
    _, truth, names = loaded[0]
    models = []
    for path, label, (s, _, file_names) in zip(scores, labels, loaded, strict=True):
        if file_names != names:
            raise DataError(f"{path} names other classes than {scores[0]}: every scores file must hold the same "
                            "classes in the same order")  # fmt: skip
        models.append(ComparedModel(label, str(path), s, np.full(s.shape[1], value), said))
    return compare(models, truth, names, f"images of {targets}", resamples=resamples)
