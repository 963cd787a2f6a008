"""Run a model bundle on a split of the dataset it was trained on: scores, targets, metrics, tuned thresholds.

``probmcl-med evaluate --checkpoint RUN`` is this module plus printing:

1. :func:`build_split_dataset` rebuilds the dataset from the bundle's stored config (``dataset.name``, ``root``,
   ``options``, ``skip_bad``; the split names ``train_split``/``val_split``/``test_split``), with the deterministic
   eval transform at the bundle's image size and its stored normalisation (never recomputed: the model is fed what
   it was trained on). A dataset whose classes differ from the checkpoint's is a one-line CheckpointError.
2. :func:`score_split` runs the model over it (:func:`probmcl_med.inference.loop.run_bundle`: batched, no grad, GPU
   when present) and returns (N, C) probabilities and (N, C) labels.
3. :func:`evaluate_checkpoint` adds the metrics with their bootstrap intervals and calibration, optionally tunes
   per-class thresholds on the validation split for a recall target (written to ``RUN/thresholds.json`` only when
   asked, never into ``model.pt``), and the model cost; it says which thresholds it used, and warns when it reports
   on the split the thresholds were tuned on.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.bundle import DatasetSource, ModelBundle, load_model_bundle, resolve_bundle_path
from probmcl_med.calibration_file import calibration_path, describe_probabilities
from probmcl_med.core.metrics import multilabel_metrics
from probmcl_med.core.temperature import calibrated_probabilities
from probmcl_med.data.base import normalize_split
from probmcl_med.data.datasets import build_dataset
from probmcl_med.devices import resolve_device
from probmcl_med.errors import CheckpointError, DataError
from probmcl_med.evaluation.calibrate import fit_calibration, per_class_ece
from probmcl_med.evaluation.complexity import model_cost
from probmcl_med.evaluation.gallery import DEFAULT_PER_KIND, build_gallery
from probmcl_med.evaluation.report import add_statistics, write_report
from probmcl_med.evaluation.thresholds import threshold_tradeoff, tune_thresholds
from probmcl_med.fileio import read_json_lines
from probmcl_med.inference.features import feature_batches
from probmcl_med.inference.inputs import eval_transform, prediction_batches
from probmcl_med.inference.loop import ProgressHook, run_bundle
from probmcl_med.inference.predict import decision_thresholds, describe_thresholds
from probmcl_med.operating_point import save_thresholds, thresholds_path
from probmcl_med.runlock import RunLock


def dataset_source(bundle: ModelBundle, checkpoint: Any = "checkpoint") -> DatasetSource:
    """Where the bundle's training data came from; a bundle that does not say is a one-line CheckpointError."""
    if bundle.dataset is None:
        raise CheckpointError(
            f"checkpoint {checkpoint} does not record the dataset it was trained on; evaluate saved predictions "
            "instead (probmcl-med predict, then evaluate --scores --targets)"
        )
    return bundle.dataset


def split_name(source: DatasetSource, split: str) -> str:
    """The dataset's own name for ``train``/``valid``/``test`` (the run's ``*_split`` settings; aliases accepted)."""
    return source.splits[normalize_split(split, where="--split")]


def check_classes(
    checkpoint_classes: Sequence[str], dataset_classes: Sequence[str], checkpoint: Any, source: Any
) -> None:
    """One-line CheckpointError unless the dataset has the checkpoint's classes in the checkpoint's order."""
    a, b = [str(c) for c in checkpoint_classes], [str(c) for c in dataset_classes]
    if a == b:
        return
    if len(a) != len(b):
        detail = f"{len(a)} classes vs {len(b)}"
    elif sorted(a) == sorted(b):
        detail = "the same classes in another order"
    else:
        i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
        detail = f"class {i + 1} is {a[i]!r} in the checkpoint but {b[i]!r} in the dataset"
    missing = [c for c in a if c not in b][:3]
    hint = f" (not in the dataset: {', '.join(missing)})" if missing and len(a) != len(b) else ""
    raise CheckpointError(
        f"checkpoint {checkpoint} was trained on other classes than dataset {source}: {detail}{hint}; evaluate it on "
        "the dataset it was trained on"
    )


def build_split_dataset(bundle: Any, split: str, checkpoint: Any = "checkpoint", root: str | None = None) -> Any:
    """The bundle's dataset at ``split`` with the bundle's eval transform.

    Args:
        bundle: a loaded :class:`~probmcl_med.bundle.ModelBundle`.
        split: train, valid (val) or test.
        checkpoint: named in error messages.
        root: override of the stored ``dataset.root`` (the data moved since training).

    Raises:
        CheckpointError: the dataset's classes differ from the checkpoint's.
        DataError: the dataset cannot be read (missing folder, bad CSV, ...), from the dataset factory.
    """
    source = dataset_source(bundle, checkpoint)
    where = root if root is not None else source.root
    dataset = build_dataset(source.name, where, split_name(source, split), dict(source.options), source.skip_bad)
    check_classes(bundle.class_names, dataset.class_names, checkpoint, getattr(dataset, "source", source.name))
    dataset.transform = eval_transform(bundle)
    return dataset


@dataclass
class SplitScores:
    """Model outputs on one split: ``scores`` (N, C) probabilities and ``targets`` (N, C) 0/1 labels; ``indices``
    (N,) the dataset index of each row, ``dataset`` the split's dataset (with the eval transform), ``logits`` (N, C)
    the head's raw logits."""

    split: str
    scores: np.ndarray
    targets: np.ndarray
    source: str
    skipped: int = 0
    indices: np.ndarray | None = None
    dataset: Any = None
    logits: np.ndarray | None = None


def score_split(
    bundle: Any,
    split: str,
    *,
    checkpoint: Any = "checkpoint",
    batch_size: int = 64,
    device: Any = "auto",
    workers: int = 0,
    root: str | None = None,
    progress: ProgressHook | None = None,
) -> SplitScores:
    """Probabilities and labels of every (readable) sample of ``split``, in dataset order."""
    dataset = build_split_dataset(bundle, split, checkpoint=checkpoint, root=root)
    dev = resolve_device(device)
    loader = prediction_batches(dataset, batch_size, workers, dev)
    if getattr(bundle, "feature_cache", False):  # a frozen encoder's head: its features from the disk cache
        loader = feature_batches(bundle, dataset, batch_size, dev, workers, progress)
    out = run_bundle(bundle, loader, dev, progress=progress, description=f"scoring the {split} split")
    if out.targets is None or len(out.probs) == 0:
        raise DataError(f"dataset {dataset.source}: no readable sample in split {split!r}")
    skipped = len(dataset) - len(out.probs)
    return SplitScores(split, out.probs, out.targets, str(dataset.source), skipped, out.indices, dataset, out.logits)


def parse_recall_target(text: str) -> float:
    """``recall=0.95`` (or ``0.95``) -> 0.95; a fraction in (0, 1]. Anything else is a one-line DataError."""
    raw = text.strip()
    if "=" in raw:
        key, raw = (part.strip() for part in raw.split("=", 1))
        if key.lower() != "recall":
            close = difflib.get_close_matches(key.lower(), ["recall"], n=1, cutoff=0.5)
            hint = " (did you mean recall?)" if close else ""
            raise DataError(f"--tune-thresholds {text!r}: only recall=R is supported{hint}, e.g. recall=0.95")
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"--tune-thresholds {text!r}: expected recall=R with R a fraction, e.g. recall=0.95") from None
    if not 0.0 < value <= 1.0:
        raise DataError(f"--tune-thresholds {text!r}: the recall target must be a fraction in (0, 1], e.g. 0.95")
    return value


@dataclass
class Evaluation:
    """Everything ``evaluate --checkpoint`` prints and reports.

    Attributes:
        metrics: :func:`~probmcl_med.core.metrics.multilabel_metrics` of the split at ``thresholds``
            (plus ``threshold_tuning`` when thresholds were tuned).
        test: the evaluated split's scores and targets.
        thresholds: (C,) thresholds used.
        threshold_source: which thresholds, in words (the line every command prints).
        tradeoff: :func:`~probmcl_med.evaluation.thresholds.threshold_tradeoff` vs 0.5 when thresholds were tuned.
        cost: :class:`~probmcl_med.evaluation.complexity.ModelCost` of encoder + head.
        meta: the report header (checkpoint, dataset, split, thresholds, model cost, ...).
        bundle: the loaded model (for the report's Grad-CAM gallery).
        warnings: what the user should know before reading the numbers (one line each).
        saved: the thresholds file written (``--save``), or None.
    """

    metrics: dict[str, Any]
    test: SplitScores
    thresholds: np.ndarray
    threshold_source: str
    tradeoff: dict[str, Any] | None
    cost: Any
    meta: dict[str, Any] = field(default_factory=dict)
    bundle: Any = None
    warnings: list[str] = field(default_factory=list)
    saved: Path | None = None


def _tradeoff_text(tradeoff: dict[str, Any]) -> tuple[str, str]:
    """(summary line, per-class line) of what the tuned thresholds cost vs the baseline, in percentage points."""
    tuned, base = tradeoff["summary"]["tuned"], tradeoff["summary"]["baseline"]
    b = tradeoff["baseline_threshold"]

    def pair(key: str) -> str:
        if tuned[key] is None or base[key] is None:
            return f"{key} n/a"
        return f"{key} {base[key]:.1f} -> {tuned[key]:.1f}"

    summary = f"vs threshold {b:g}: " + ", ".join(pair(k) for k in ("CP", "CR", "OP", "OR"))
    per_class = ", ".join(f"{r['name']} {r['precision_cost']:+.1f}" for r in tradeoff["per_class"])
    return summary, f"precision paid per class (points, {b:g} minus tuned): {per_class}"


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    *,
    threshold: float | None = None,
    tune_recall: float | None = None,
    save: bool = False,
    calibrate: bool = False,
    resamples: int = 1000,
    batch_size: int = 64,
    device: Any = "auto",
    workers: int | None = None,
    root: str | None = None,
    progress: ProgressHook | None = None,
) -> Evaluation:
    """Load a bundle, score ``split``, compute the metrics (and tune thresholds on the validation split if asked).

    Args:
        checkpoint: a run folder or its ``model.pt``.
        split: the split to evaluate (train, valid, test).
        threshold: one threshold for every class; None uses ``thresholds.json`` beside the model, else 0.5.
        tune_recall: if given, per class the highest threshold keeping recall >= ``tune_recall`` on the validation
            split (:func:`~probmcl_med.evaluation.thresholds.tune_thresholds`), used for ``split``. Excludes
            ``threshold``.
        save: with ``tune_recall``, write the tuned thresholds to ``thresholds.json`` beside ``model.pt``; with
            ``calibrate``, the temperatures to ``calibration.json`` (atomically; ``model.pt`` is never rewritten).
            Without it, nothing is written.
        calibrate: fit one temperature per class on the validation split's logits
            (:mod:`probmcl_med.evaluation.calibrate`) and use them for ``split`` (and for thresholds tuned in the same
            call, which are then on the calibrated scale).
        resamples: bootstrap resamples for the 95 % intervals (0: none).
        batch_size: images per forward pass.
        device: auto (GPU when present), cpu, cuda:N.
        workers: DataLoader workers (None: the run config's ``workers``).
        root: override of the stored dataset root.
        progress: progress hook (:class:`~probmcl_med.inference.loop.ProgressHook`).

    Raises:
        CheckpointError: missing/corrupt checkpoint, classes that differ from the dataset's, or a stale
            ``thresholds.json`` when it would be used.
        DataError: bad split, threshold or data; ``save`` without ``tune_recall``.
    """
    if threshold is not None and tune_recall is not None:
        raise DataError("give either --threshold or --tune-thresholds, not both")
    if save and tune_recall is None and not calibrate:
        raise DataError(
            "--save writes tuned thresholds or a calibration: add --tune-thresholds recall=R or --calibrate"
        )
    evaluated = normalize_split(split, where="--split")
    path = resolve_bundle_path(checkpoint)
    dev = resolve_device(device)
    # --save writes beside model.pt: hold the run folder's lock from reading the weights to saving the thresholds,
    # so that no training run replaces model.pt in between (the thresholds file records the hash of model.pt)
    lock = RunLock(path.parent, "evaluate --save") if save else None
    try:
        if lock is not None:
            lock.acquire()
        bundle = load_model_bundle(path, device=dev)
        data = dataset_source(bundle, path)
        n_workers = int(bundle.training_config.get("workers", 0)) if workers is None else workers
        kwargs = {"checkpoint": path, "batch_size": batch_size, "device": dev, "workers": n_workers, "root": root}
        tradeoff, saved, calibration_fit = None, None, None
        op: dict[str, Any] = {"checkpoint": str(path.parent), "tuned": False}
        if calibrate:
            bundle.calibration, bundle.calibration_problem = None, None  # fit on the raw logits, even over a stale file
            raw = score_split(bundle, "valid", progress=progress, **kwargs)
            fitted, calibration_fit = fit_calibration(
                bundle, raw.logits, raw.targets, path, save=save, split_name=split_name(data, "valid")
            )
            calibration_fit["saved"] = None if fitted.path is None else str(fitted.path)
        if tune_recall is not None:
            valid = score_split(bundle, "valid", progress=progress, **kwargs)
            thresholds = tune_thresholds(valid.scores, valid.targets, recall=tune_recall)
            rule = f"recall >= {tune_recall:g} per class"
            op.update(tuned=True, rule=rule, tuned_on=split_name(data, "valid"), recall_target=tune_recall)
            if save:
                on = bundle.calibration.sha256 if bundle.calibration is not None else None
                tuned = save_thresholds(path, bundle.class_names, thresholds, rule=rule, split="valid",
                                        split_name=split_name(data, "valid"), samples=len(valid.scores),
                                        calibration_sha256=on)  # fmt: skip
                saved = tuned.path
                source = f"{tuned.describe()}, just saved"
            else:
                source = (
                    f"per class, tuned now for {rule} on the {split_name(data, 'valid')} split (not saved: add "
                    f"--save to write {thresholds_path(path)})"
                )
            same_split = evaluated == "valid"
        else:
            thresholds = decision_thresholds(bundle, threshold)
            source = describe_thresholds(bundle, threshold)
            same_split = False
            if threshold is None and bundle.tuned is not None:
                t = bundle.tuned
                op.update(tuned=True, rule=t.rule, tuned_on=t.split_name)
                same_split = normalize_split(t.split) == evaluated
    finally:
        if lock is not None:
            lock.release()
    op.update(description=source, same_split=same_split)
    warnings = []
    if same_split:
        warnings.append(
            f"the thresholds were tuned on the {op['tuned_on']} split and this evaluation reads the same split: its "
            "recall and precision are optimistic; evaluate --split test for numbers that carry over"
        )
    test = score_split(bundle, split, progress=progress, **kwargs)
    metrics = multilabel_metrics(test.scores, test.targets, threshold=thresholds, class_names=bundle.class_names)
    metrics = add_statistics(metrics, test.scores, test.targets, resamples=resamples)
    cost = model_cost(bundle.classifier(), bundle.image_size)
    meta: dict[str, Any] = {
        "checkpoint": str(path),
        "dataset": f"{data.name} ({test.source})",
        "split": split_name(data, split),
        "thresholds from": source,
        "probabilities": describe_probabilities(bundle.calibration),
        "model cost": f"{cost.describe()} (encoder + head; MACs = FLOPs / 2)",
        "encoder": bundle.encoder_name,
    }
    if test.skipped:
        meta["skipped samples"] = f"{test.skipped} unreadable sample(s) skipped (dataset.skip_bad)"
    if tune_recall is not None:
        tradeoff = threshold_tradeoff(test.scores, test.targets, thresholds, class_names=bundle.class_names)
        summary, per_class = _tradeoff_text(tradeoff)
        meta["precision cost of the recall target"] = summary
        meta["precision cost per class"] = per_class
        metrics["threshold_tuning"] = {"recall_target": tune_recall, "tuned_on": "valid", **tradeoff}
    metrics["operating_point"] = op
    if bundle.calibration is not None and test.logits is not None:
        raw_ece = per_class_ece(calibrated_probabilities(test.logits, np.ones(test.logits.shape[1])), test.targets)
        cal_ece = per_class_ece(test.scores, test.targets)
        meta["ECE per class, raw -> calibrated"] = (
            f"worst {max(raw_ece):.1f} -> {max(cal_ece):.1f} %, mean {np.mean(raw_ece):.1f} -> {np.mean(cal_ece):.1f} %"
        )
        metrics["temperature_scaling"] = {
            "per_class_ece_raw": raw_ece,
            "per_class_ece_calibrated": cal_ece,
            "fit": calibration_fit,
        }
    if calibration_fit is not None:
        where = calibration_fit["saved"] or f"not saved: add --save to write {calibration_path(path)}"
        meta["calibration"] = (
            f"fitted now on {calibration_fit['samples']} {calibration_fit['fitted_on']} images, validation ECE worst "
            f"{max(calibration_fit['ece_before']):.1f} -> {max(calibration_fit['ece_after']):.1f} % ({where})"
        )
    return Evaluation(
        metrics, test, np.asarray(thresholds, dtype=np.float64), source, tradeoff, cost, meta, bundle, warnings, saved
    )


def read_training_log(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` beside the model (one JSON object per epoch per stage); [] when absent.

    Torn or non-JSON lines (a run killed mid-write) are skipped; records without an integer ``epoch`` too.
    """
    path = resolve_bundle_path(checkpoint).parent / "metrics.jsonl"
    return [r for r in read_json_lines(path) if isinstance(r.get("epoch"), int)]


def write_checkpoint_report(
    out_dir: str | Path,
    result: Evaluation,
    recall_floor: float = 0.8,
    precision_floor: float = 0.5,
    gallery: int = DEFAULT_PER_KIND,
    overwrite: bool = False,
) -> Path:
    """The report folder of an :func:`evaluate_checkpoint` result: its metrics, the training curves from the run's
    ``metrics.jsonl`` and, with ``gallery`` > 0, the most confident mistakes per class with their Grad-CAM
    (:func:`~probmcl_med.evaluation.gallery.build_gallery`). See :func:`~probmcl_med.evaluation.report.write_report`.
    """
    test = result.test
    examples = None
    if gallery > 0 and test.dataset is not None and test.indices is not None:
        examples = build_gallery(
            result.bundle, test.dataset, test.indices, test.scores, test.targets, result.thresholds, gallery
        )
    return write_report(
        out_dir,
        result.metrics,
        test.scores,
        test.targets,
        list(result.bundle.class_names),
        result.meta,
        recall_floor,
        precision_floor=precision_floor,
        training_log=read_training_log(result.meta["checkpoint"]),
        gallery=examples,
        overwrite=overwrite,
    )
