"""Run a model bundle on a split of the dataset it was trained on: scores, targets, metrics, tuned thresholds.

``probmcl-med evaluate --checkpoint RUN`` is this module plus printing:

1. :func:`~probmcl_med.inference.splits.build_split_dataset` rebuilds the dataset from the bundle's stored config (``dataset.name``, ``root``,
   ``options``, ``skip_bad``; the split names ``train_split``/``val_split``/``test_split``), with the deterministic
   eval transform at the bundle's image size and its stored normalisation (never recomputed: the model is fed what
   it was trained on). A dataset whose classes differ from the checkpoint's is a one-line CheckpointError.
2. :func:`score_split` runs the model over it (:func:`probmcl_med.inference.loop.run_bundle`: batched, no grad, GPU
   when present) and returns (N, C) probabilities and (N, C) labels.
3. :func:`evaluate_checkpoint` optionally tunes per-class thresholds on the validation split for a recall target
   (written to ``RUN/thresholds.json`` only when asked, never into ``model.pt``), measures the model cost, and
   assembles the one :class:`~probmcl_med.evaluation.result.EvaluationResult` (metrics, intervals, calibration,
   verdict, findings, tuned against 0.5) that the report, ``--json`` and the terminal render.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.bundle import DatasetSource, ModelBundle, load_model_bundle, resolve_bundle_path
from probmcl_med.calibration_file import calibration_path, describe_probabilities
from probmcl_med.core.metrics import check_recall_floor
from probmcl_med.core.temperature import calibrated_probabilities
from probmcl_med.data.base import normalize_split
from probmcl_med.devices import resolve_device
from probmcl_med.errors import DataError
from probmcl_med.evaluation.bootstrap import RESAMPLES
from probmcl_med.evaluation.calibrate import fit_calibration, per_class_ece
from probmcl_med.evaluation.complexity import model_cost
from probmcl_med.evaluation.findings import PRECISION_FLOOR
from probmcl_med.evaluation.gallery import DEFAULT_PER_KIND, build_gallery
from probmcl_med.evaluation.report import write_report
from probmcl_med.evaluation.result import RECALL_FLOOR, EvaluationResult, assemble
from probmcl_med.evaluation.thresholds import OperatingPoint, tune_thresholds, tuning_coverage
from probmcl_med.fileio import read_json_lines
from probmcl_med.inference.features import feature_batches
from probmcl_med.inference.inputs import prediction_batches
from probmcl_med.inference.loop import ProgressHook, run_bundle
from probmcl_med.inference.predict import decision_thresholds, describe_thresholds
from probmcl_med.inference.splits import build_split_dataset, dataset_source, split_name
from probmcl_med.operating_point import DEFAULT_THRESHOLD, save_thresholds, thresholds_path
from probmcl_med.runlock import RunLock


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


@dataclass
class CheckpointEvaluation:
    """What ``evaluate --checkpoint`` produced: the typed result every output renders, and what the report's
    gallery needs besides (the split's dataset and the model).

    Attributes:
        result: the :class:`~probmcl_med.evaluation.result.EvaluationResult`.
        split: the evaluated split's scores, targets, dataset and row indices.
        bundle: the loaded model.
    """

    result: EvaluationResult
    split: SplitScores
    bundle: ModelBundle


def evaluate_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    *,
    threshold: float | None = None,
    tune_recall: float | None = None,
    save: bool = False,
    calibrate: bool = False,
    resamples: int = RESAMPLES,
    recall_floor: float = RECALL_FLOOR,
    precision_floor: float = PRECISION_FLOOR,
    batch_size: int = 64,
    device: Any = "auto",
    workers: int | None = None,
    root: str | None = None,
    progress: ProgressHook | None = None,
) -> CheckpointEvaluation:
    """Load a bundle, score ``split``, and assemble its evaluation (tuning thresholds on the validation split if
    asked).

    Args:
        checkpoint: a run folder or its ``model.pt``.
        split: the split to evaluate (train, valid, test).
        threshold: one threshold for every class; None uses ``thresholds.json`` beside the model, else 0.5.
        tune_recall: if given, per class the highest threshold keeping recall >= ``tune_recall`` on the validation
            split (:func:`~probmcl_med.evaluation.thresholds.tune_thresholds`), used for ``split`` and set against
            0.5. Excludes ``threshold``. A class without a validation positive keeps 0.5 and is named.
        save: with ``tune_recall``, write the tuned thresholds to ``thresholds.json`` beside ``model.pt``; with
            ``calibrate``, the temperatures to ``calibration.json`` (atomically; ``model.pt`` is never rewritten).
            Without it, nothing is written.
        calibrate: fit one temperature per class on the validation split's logits
            (:mod:`probmcl_med.evaluation.calibrate`) and use them for ``split`` (and for thresholds tuned in the same
            call, which are then on the calibrated scale).
        resamples: bootstrap resamples for the 95 % intervals (0: none).
        recall_floor: a fraction; classes under it are named first.
        precision_floor: a fraction; classes called with a precision under it are over-called.
        batch_size: images per forward pass.
        device: auto (GPU when present), cpu, cuda:N.
        workers: DataLoader workers (None: the run config's ``workers``).
        root: override of the stored dataset root.
        progress: progress hook (:class:`~probmcl_med.inference.loop.ProgressHook`).

    Raises:
        CheckpointError: missing/corrupt checkpoint, classes that differ from the dataset's, or a stale
            ``thresholds.json`` when it would be used.
        DataError: bad split, threshold, floor or data; ``save`` without ``tune_recall``.
    """
    if threshold is not None and tune_recall is not None:
        raise DataError("give either --threshold or --tune-thresholds, not both")
    if save and tune_recall is None and not calibrate:
        raise DataError(
            "--save writes tuned thresholds or a calibration: add --tune-thresholds recall=R or --calibrate"
        )
    check_recall_floor(recall_floor)
    check_recall_floor(precision_floor)
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
        calibration_fit = None
        if calibrate:
            bundle.calibration, bundle.calibration_problem = None, None  # fit on the raw logits, even over a stale file
            raw = score_split(bundle, "valid", progress=progress, **kwargs)
            fitted, calibration_fit = fit_calibration(
                bundle, raw.logits, raw.targets, path, save=save, split_name=split_name(data, "valid")
            )
            calibration_fit["saved"] = None if fitted.path is None else str(fitted.path)
        if tune_recall is not None:
            thresholds, op = _tune(bundle, path, data, tune_recall, save, progress, kwargs)
            op = replace(op, same_split=evaluated == "valid")
        else:
            thresholds = decision_thresholds(bundle, threshold)
            op = OperatingPoint(description=describe_thresholds(bundle, threshold), checkpoint=str(path.parent))
            if threshold is None and bundle.tuned is not None:
                t = bundle.tuned
                op = replace(op, tuned=True, rule=t.rule, tuned_on=t.split_name,
                             same_split=normalize_split(t.split) == evaluated)  # fmt: skip
    finally:
        if lock is not None:
            lock.release()
    test = score_split(bundle, split, progress=progress, **kwargs)
    cost = model_cost(bundle.classifier(), bundle.image_size)
    meta: dict[str, Any] = {
        "checkpoint": str(path),
        "dataset": f"{data.name} ({test.source})",
        "split": split_name(data, split),
        "thresholds from": op.description,
        "probabilities": describe_probabilities(bundle.calibration),
        "model cost": f"{cost.describe()} (encoder + head; MACs = FLOPs / 2)",
        "encoder": bundle.encoder_name,
    }
    warnings = []
    if test.skipped:
        meta["skipped samples"] = f"{test.skipped} unreadable sample(s) skipped (dataset.skip_bad)"
        warnings.append(f"{test.skipped} unreadable sample(s) of the {split} split were skipped (dataset.skip_bad)")
    scaling = _temperature_scaling(bundle, test, calibration_fit, path, meta)
    result = assemble(
        test.scores,
        test.targets,
        bundle.class_names,
        thresholds,
        operating_point=op,
        meta=meta,
        recall_floor=recall_floor,
        precision_floor=precision_floor,
        resamples=resamples,
        compare_with=DEFAULT_THRESHOLD if tune_recall is not None else None,
        cost=cost,
        warnings=warnings,
        temperature_scaling=scaling,
    )
    return CheckpointEvaluation(result, test, bundle)


def _temperature_scaling(
    bundle: ModelBundle, test: SplitScores, fit: dict[str, Any] | None, path: Path, meta: dict[str, Any]
) -> dict[str, Any] | None:
    """With a calibration in use: the evaluated split's per-class ECE (percent) raw and calibrated, and the fit made
    by this call (``fit``, or None); their one-line summaries go into ``meta``. None without a calibration."""
    if fit is not None:
        where = fit["saved"] or f"not saved: add --save to write {calibration_path(path)}"
        meta["calibration"] = (
            f"fitted now on {fit['samples']} {fit['fitted_on']} images, validation ECE worst "
            f"{max(fit['ece_before']):.1f} -> {max(fit['ece_after']):.1f} % ({where})"
        )
    if bundle.calibration is None or test.logits is None:
        return None
    raw_ece = per_class_ece(calibrated_probabilities(test.logits, np.ones(test.logits.shape[1])), test.targets)
    cal_ece = per_class_ece(test.scores, test.targets)
    meta["ECE per class, raw -> calibrated"] = (
        f"worst {max(raw_ece):.1f} -> {max(cal_ece):.1f} %, mean {np.mean(raw_ece):.1f} -> {np.mean(cal_ece):.1f} %"
    )
    return {"per_class_ece_raw": raw_ece, "per_class_ece_calibrated": cal_ece, "fit": fit}


def _tune(
    bundle: ModelBundle,
    path: Path,
    data: DatasetSource,
    recall: float,
    save: bool,
    progress: ProgressHook | None,
    kwargs: dict[str, Any],
) -> tuple[np.ndarray, OperatingPoint]:
    """Thresholds tuned on the validation split for ``recall`` (saved with ``save``), and their operating point."""
    valid = score_split(bundle, "valid", progress=progress, **kwargs)
    thresholds = tune_thresholds(valid.scores, valid.targets, recall=recall)
    untuned, few = tuning_coverage(valid.targets, bundle.class_names)
    rule, valid_name = f"recall >= {recall:g} per class", split_name(data, "valid")
    saved = None
    if save:
        on = bundle.calibration.sha256 if bundle.calibration is not None else None
        tuned = save_thresholds(path, bundle.class_names, thresholds, rule=rule, split="valid",
                                split_name=valid_name, samples=len(valid.scores), calibration_sha256=on)  # fmt: skip
        saved = str(tuned.path)
        # said of the file, so the report stays true when read later
        description = f"{tuned.describe()}, written by this evaluation"
    else:
        description = (
            f"per class, tuned now for {rule} on the {valid_name} split (not saved: add --save to write "
            f"{thresholds_path(path)})"
        )
    op = OperatingPoint(
        description=description,
        tuned=True,
        rule=rule,
        tuned_on=valid_name,
        recall_target=recall,
        checkpoint=str(path.parent),
        untuned=untuned,
        few_positives=few,
        saved=saved,
    )
    return thresholds, op


def read_training_log(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` beside the model (one JSON object per epoch per stage); [] when absent.

    Torn or non-JSON lines (a run killed mid-write) are skipped; records without an integer ``epoch`` too.
    """
    path = resolve_bundle_path(checkpoint).parent / "metrics.jsonl"
    return [r for r in read_json_lines(path) if isinstance(r.get("epoch"), int)]


def write_checkpoint_report(
    out_dir: str | Path,
    evaluation: CheckpointEvaluation,
    gallery: int = DEFAULT_PER_KIND,
    overwrite: bool = False,
) -> Path:
    """The report folder of an :func:`evaluate_checkpoint` result, with the training curves from the run's
    ``metrics.jsonl`` and, with ``gallery`` > 0, the most confident mistakes per class with their Grad-CAM
    (:func:`~probmcl_med.evaluation.gallery.build_gallery`). See :func:`~probmcl_med.evaluation.report.write_report`.
    """
    test, result = evaluation.split, evaluation.result
    examples = None
    if gallery > 0 and test.dataset is not None and test.indices is not None:
        examples = build_gallery(
            evaluation.bundle, test.dataset, test.indices, test.scores, test.targets, result.thresholds, gallery
        )
    log = read_training_log(result.meta["checkpoint"])
    return write_report(out_dir, result, training_log=log, gallery=examples, overwrite=overwrite)
