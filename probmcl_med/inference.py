"""Run a trained model bundle: batched probabilities for images, folders of images and whole slides.

Everything here is library code (no printing): the CLI's ``predict`` command wraps it with a progress bar.

- :func:`run_model` is the one batched loop (``torch.inference_mode``, GPU when present) that ``evaluate``,
  ``predict`` and the tests share: sigmoid(head(encoder(x))) for every batch of a DataLoader, plus the labels when
  the batch has them and, on request, the MDN's per-class spread (:func:`mdn_uncertainty`).
- :func:`predict_images` and :func:`predict_slide` build the inputs (the bundle's deterministic eval transform and
  normalisation) and return a :class:`Predictions`; :func:`write_predictions` writes them as a folder, atomically.

Input kinds (:func:`input_kind`): a folder of images, an image file, or a whole slide. A file is a slide when
OpenSlide recognises its format (``openslide.OpenSlide.detect_format``, which tells a tiled pyramidal TIFF from a
plain TIFF image) or when its extension only ever names a slide (``.svs``, ``.ndpi``, ``.mrxs``, ...: then OpenSlide
is asked to open it and a file it cannot read is a one-line :class:`DataError`).

Uncertainty (``uncertainty=True``): when the bundle keeps the stage-1 mixture density network, each input also gets,
per class k, the mixture weight ``pi_k`` and the variance ``var_k`` that the MDN assigns to the class's component for
the encoder's unit-norm features h(x) (paper Eq. 1, docs/math.md s.1-2). What it is: the spread the contrastive
stage gave that component; ``var_k >= 1`` by construction, and larger values mean the MDN places the sample's class-k
component less sharply. What it is not: a calibrated probability, or a validated predictor of classification
errors: the MDN is trained only by the stage-1 objective (NLL + PCL) and nothing in this project measures how well
``var_k`` ranks mistakes. Treat it as an exploratory signal.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from probmcl_med.devices import resolve_device
from probmcl_med.errors import CheckpointError, DataError, UserError, one_line_message
from probmcl_med.fileio import atomic_directory, check_replaceable_folder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
"""Extensions listed as images in a folder (case-insensitive)."""

SLIDE_ONLY_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".svslide", ".bif")
"""Extensions that only ever name whole slides (a ``.tif`` may be either; OpenSlide's format detection decides)."""

OUTPUT_MARKER = ".probmcl-med-output"
"""File inside every predict/explain output folder: such a folder may be replaced by the next run to the same path."""


class ProgressHook(Protocol):
    """What the loops report to (the CLI implements it with a rich progress bar)."""

    def start(self, description: str, total: int) -> None:
        """A new pass over ``total`` samples begins."""

    def advance(self, count: int) -> None:
        """``count`` more samples are done."""


# --------------------------------------------------------------------------------------------------------------------
# Devices and inputs
# --------------------------------------------------------------------------------------------------------------------


def is_slide(path: str | Path) -> bool:
    """True when ``path`` is a whole slide: OpenSlide detects its format, or its extension only names slides."""
    path = Path(path)
    if path.suffix.lower() in SLIDE_ONLY_SUFFIXES:
        return True
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:  # an unreadable file is not a slide; the image reader reports it
        return False


def input_kind(path: str | Path) -> str:
    """``"folder"``, ``"slide"`` or ``"image"`` for an existing input path.

    Raises:
        DataError: the path does not exist.
    """
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise DataError(f"input {path} does not exist; give an image, a folder of images or a whole slide")
    return "slide" if is_slide(path) else "image"


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (not its subfolders), sorted by name.

    Raises:
        DataError: the folder holds no file with an image extension (:data:`IMAGE_SUFFIXES`).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); give a folder of images, one image "
            "or a slide"
        )
    return files


class ItemDataset(Dataset):
    """Items ``{"image": path | slide location}`` through a transform; each output also carries its ``index``."""

    def __init__(self, items: Sequence[dict[str, Any]], transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from probmcl_med.data.base import find_data_error

        try:
            out = dict(self.transform(dict(self.items[index])))
        except Exception as exc:  # MONAI's Compose re-raises a reader's DataError as a RuntimeError
            err = find_data_error(exc)
            if err is None:
                raise
            raise DataError(str(err)) from None
        out["index"] = index
        return out


def eval_transform(bundle: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The deterministic transform the bundle's model expects: its image size and its stored mean/std."""
    from probmcl_med.data.transforms import build_eval_transform

    return build_eval_transform(bundle.image_size, bundle.mean, bundle.std)


def make_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """A deterministic (unshuffled) DataLoader over ``dataset`` (the data layer's collate drops skipped samples)."""
    from probmcl_med.data.base import make_loader as data_loader

    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: give a positive number of images per batch")
    return data_loader(dataset, batch_size, shuffle=False, workers=workers, pin_memory=device.type == "cuda")


# --------------------------------------------------------------------------------------------------------------------
# The batched loop
# --------------------------------------------------------------------------------------------------------------------


def mdn_uncertainty(mdn: torch.nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mixture weight and variance that the MDN gives unit-norm features (math.md s.1).

    Args:
        mdn: the stage-1 mixture density network; ``mdn(h)`` returns a
            :class:`~probmcl_med.core.mixture.GaussianMixture` (or a ``(pi, mu, var)`` triple).
        features: (B, H) encoder features; L2-normalised here (a no-op for already unit-norm features).

    Returns:
        ``(pi, var)``, each (B, C) float32: ``pi_k`` in [0, 1] summing to 1 over k, ``var_k >= 1``.
    """
    out = mdn(F.normalize(features.float(), dim=1))
    if hasattr(out, "weights") and hasattr(out, "variances"):
        return out.weights.float(), out.variances.float()
    pi, _, var = out
    return pi.float(), var.float()


def require_mdn(bundle: Any, checkpoint: Any = None) -> None:
    """One-line CheckpointError (naming ``checkpoint``) unless the bundle kept its stage-1 MDN (for uncertainty)."""
    if bundle.mdn is None:
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "this checkpoint"
        raise CheckpointError(
            f"{where} keeps no MDN (trained without a contrastive stage, or saved without it); --uncertainty "
            "needs one: drop --uncertainty or use a two-stage run's checkpoint"
        )


@contextlib.contextmanager
def _worker_errors() -> Iterator[None]:
    """Re-raise a UserError from a DataLoader worker with its original one-line message."""
    try:
        yield
    except UserError as exc:
        message = one_line_message(exc)
        if message == str(exc):
            raise
        raise type(exc)(message) from None


@dataclass
class BatchOutputs:
    """What :func:`run_model` collects, in loader order.

    Attributes:
        probs: (N, C) float64 probabilities, sigmoid of the logits.
        indices: (N,) dataset indices of the rows (samples a skip_bad dataset dropped are absent).
        targets: (N, C) float64 labels when the batches carry ``label``, else None.
        pi: (N, C) MDN weights, when asked for.
        var: (N, C) MDN variances, when asked for.
    """

    probs: np.ndarray
    indices: np.ndarray
    targets: np.ndarray | None = None
    pi: np.ndarray | None = None
    var: np.ndarray | None = None


def run_model(
    bundle: Any,
    loader: DataLoader,
    device: torch.device,
    *,
    uncertainty: bool = False,
    progress: ProgressHook | None = None,
    description: str = "predicting",
) -> BatchOutputs:
    """sigmoid(head(encoder(x))) for every batch of ``loader``, under ``torch.inference_mode`` on ``device``.

    Args:
        bundle: a :class:`~probmcl_med.bundle.ModelBundle` (moved to ``device`` here).
        loader: batches of ``{"image": (B, 3, S, S), "label"?: (B, C), "index"?: (B,)}``.
        device: where the model runs.
        uncertainty: also collect the MDN's (pi, var) per class (:func:`mdn_uncertainty`).
        progress: told the total (``len(loader.dataset)``) first, then the number of samples after each batch.
        description: what the progress bar says.

    Raises:
        CheckpointError: ``uncertainty`` asked for but the bundle has no MDN.
    """
    if uncertainty:
        require_mdn(bundle)
    bundle.to(device)
    classifier = bundle.classifier()
    probs, indices, targets, pis, variances = [], [], [], [], []
    offset = 0
    if progress is not None:
        progress.start(description, len(loader.dataset))  # type: ignore[arg-type]
    with torch.inference_mode(), _worker_errors():
        for batch in loader:
            if batch is None:  # every sample of the batch was unreadable and skipped (dataset.skip_bad)
                continue
            x = batch["image"].to(device, non_blocking=True)
            features = classifier.embed(x)
            logits = classifier.head(features.to(classifier.head.weight.dtype)).float()
            probs.append(torch.sigmoid(logits).double().cpu().numpy())
            n = x.shape[0]
            index = batch.get("index")
            indices.append(np.arange(offset, offset + n) if index is None else np.asarray(index, dtype=np.int64))
            offset += n
            if "label" in batch:
                targets.append(np.asarray(batch["label"], dtype=np.float64))
            if uncertainty:
                pi, var = mdn_uncertainty(bundle.mdn, features)
                pis.append(pi.double().cpu().numpy())
                variances.append(var.double().cpu().numpy())
            if progress is not None:
                progress.advance(n)
    num_classes = len(bundle.class_names)
    return BatchOutputs(
        probs=np.concatenate(probs) if probs else np.zeros((0, num_classes)),
        indices=np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        targets=np.concatenate(targets) if targets else None,
        pi=np.concatenate(pis) if pis else None,
        var=np.concatenate(variances) if variances else None,
    )


# --------------------------------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per-input results of :func:`predict_images` or :func:`predict_slide`.

    Attributes:
        kind: "images" or "slide".
        ids: one dict per row with its identifying columns (``{"image": path}`` or ``{"x", "y", "level", "size"}``).
        probs: (N, C) probabilities.
        thresholds: (C,) decision thresholds used (predicted when ``prob >= threshold``).
        class_names: C names.
        pi, var: (N, C) MDN weight and variance per class, when uncertainty was asked for.
        slide: for a slide, ``{"path", "dimensions", "level", "downsample", "patch_size", "grid": SlideGrid}``.
    """

    kind: str
    ids: list[dict[str, Any]]
    probs: np.ndarray
    thresholds: np.ndarray
    class_names: list[str]
    pi: np.ndarray | None = None
    var: np.ndarray | None = None
    slide: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def predicted(self) -> np.ndarray:
        """(N, C) booleans: ``probs >= thresholds``."""
        return self.probs >= self.thresholds[None, :]

    def labels(self) -> list[str]:
        """Per row, the predicted class names joined with ``|`` (empty when none)."""
        return ["|".join(n for n, on in zip(self.class_names, row, strict=True) if on) for row in self.predicted]


def decision_thresholds(bundle: Any, threshold: float | None) -> np.ndarray:
    """(C,) thresholds: ``threshold`` for every class when given, else the bundle's tuned ones, else 0.5."""
    num_classes = len(bundle.class_names)
    if threshold is not None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise DataError(f"--threshold {threshold}: give a probability in [0, 1]")
        return np.full(num_classes, float(threshold))
    if bundle.thresholds is not None:
        return np.asarray(bundle.thresholds, dtype=np.float64)
    return np.full(num_classes, 0.5)


def predict_images(
    bundle: Any,
    paths: Sequence[str | Path],
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = "auto",
    workers: int = 0,
    uncertainty: bool = False,
    progress: ProgressHook | None = None,
) -> Predictions:
    """Probabilities for image files, resized and normalised as the bundle's model was trained.

    Args:
        bundle: the loaded model bundle.
        paths: image files (PNG, JPEG, TIFF, ...). An unreadable one is a one-line DataError naming it.
        threshold: one threshold for every class; None uses the bundle's tuned thresholds (else 0.5).
        batch_size: images per forward pass.
        device: "auto" (GPU when present), "cpu", "cuda:N".
        workers: DataLoader worker processes.
        uncertainty: add the MDN's per-class (pi, var).
        progress: progress hook (:class:`ProgressHook`).
    """
    dev = resolve_device(device)
    thresholds = decision_thresholds(bundle, threshold)
    if uncertainty:
        require_mdn(bundle)
    items = [{"image": str(p)} for p in paths]
    if not items:
        raise DataError("no images to predict")
    loader = make_loader(ItemDataset(items, eval_transform(bundle)), batch_size, workers, dev)
    out = run_model(bundle, loader, dev, uncertainty=uncertainty, progress=progress)
    return Predictions(
        kind="images",
        ids=[{"image": str(paths[i])} for i in out.indices],
        probs=out.probs,
        thresholds=thresholds,
        class_names=list(bundle.class_names),
        pi=out.pi,
        var=out.var,
    )


def predict_slide(
    bundle: Any,
    path: str | Path,
    *,
    patch_size: int | None = None,
    level: int = 0,
    tissue_threshold: float = 0.5,
    stride: int | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = "auto",
    workers: int = 0,
    uncertainty: bool = False,
    progress: ProgressHook | None = None,
) -> Predictions:
    """Probabilities for the tissue patches of a whole slide, read lazily through OpenSlide.

    The slide is tiled on a regular grid at ``level`` (:func:`probmcl_med.data.slides.tile_slide`); patches whose
    tissue fraction (Otsu threshold on the saturation of a thumbnail) is below ``tissue_threshold`` are skipped.
    Each kept patch is read with ``OpenSlide.read_region`` and resized to the model's input size.

    Args:
        bundle: the loaded model bundle.
        path: the slide file.
        patch_size: patch side in pixels of ``level`` (default: the model's input size, so nothing is resized).
        level: pyramid level the patches are read at.
        tissue_threshold: minimum tissue fraction of a kept patch, in [0, 1].
        stride: grid step in pixels of ``level`` (default: ``patch_size``, no overlap).
        threshold, batch_size, device, workers, uncertainty, progress: as in :func:`predict_images`.

    Returns:
        Predictions with ids ``{"x", "y", "level", "size", "tissue_fraction"}`` (x, y: level-0 pixels) and
        ``slide["grid"]``, the :class:`~probmcl_med.data.slides.SlideGrid` (thumbnail and mask for heat maps).

    Raises:
        DataError: the slide cannot be opened, the level does not exist, or no patch reaches the tissue threshold.
    """
    from probmcl_med.data.slides import tile_slide

    if not 0.0 <= float(tissue_threshold) <= 1.0:
        raise DataError(f"--tissue-threshold {tissue_threshold}: give a fraction in [0, 1]")
    if uncertainty:
        require_mdn(bundle)
    dev = resolve_device(device)
    thresholds = decision_thresholds(bundle, threshold)
    size = int(patch_size or bundle.image_size)
    grid = tile_slide(path, size, level=level, stride=stride, tissue_threshold=tissue_threshold)
    if not grid.locations:
        raise DataError(
            f"slide {path}: none of its {grid.candidates} patches of {size} px at level {level} reaches the tissue "
            f"fraction {tissue_threshold:g}; lower --tissue-threshold or the --patch-size"
        )
    loader = make_loader(ItemDataset(grid.items(), eval_transform(bundle)), batch_size, workers, dev)
    out = run_model(bundle, loader, dev, uncertainty=uncertainty, progress=progress, description="slide patches")
    keys = ("x", "y", "level", "size", "tissue_fraction")
    ids = [{k: grid.locations[i][k] for k in keys} for i in out.indices]
    for row in ids:
        row["tissue_fraction"] = round(float(row["tissue_fraction"]), 4)
    info = {
        "path": str(path),
        "dimensions": list(grid.dimensions),
        "level": level,
        "level_downsample": grid.level_downsample,
        "patch_size": size,
        "stride": grid.stride,
        "tissue_threshold": float(tissue_threshold),
        "patches_on_tissue": len(grid.locations),
        "patches_in_grid": grid.candidates,
        "grid": grid,
    }
    return Predictions("slide", ids, out.probs, thresholds, list(bundle.class_names), out.pi, out.var, info)


def heat_grid(grid: Any, ids: Sequence[dict[str, Any]], values: np.ndarray) -> np.ndarray:
    """Per-patch values painted at thumbnail resolution: (h, w) float64, NaN where no patch was predicted.

    Each patch covers ``[x, x + size * downsample)`` x ``[y, y + size * downsample)`` in level-0 pixels; overlapping
    patches (a stride below the patch size) are averaged.

    Args:
        grid: the :class:`~probmcl_med.data.slides.SlideGrid` (thumbnail size and level-0 -> thumbnail scale).
        ids: per patch ``{"x", "y", "size", ...}``.
        values: (N,) one value per patch (a class's probabilities).
    """
    h, w = grid.mask.shape
    total = np.zeros((h, w))
    count = np.zeros((h, w))
    extent = None
    for row, value in zip(ids, values, strict=True):
        extent = float(row["size"]) * grid.level_downsample
        x0, y0 = grid.to_thumbnail(row["x"], row["y"])
        x1, y1 = grid.to_thumbnail(row["x"] + extent, row["y"] + extent)
        c0, r0 = int(np.floor(x0)), int(np.floor(y0))
        c1, r1 = max(int(np.ceil(x1)), c0 + 1), max(int(np.ceil(y1)), r0 + 1)
        total[r0:r1, c0:c1] += value
        count[r0:r1, c0:c1] += 1
    return np.divide(total, count, out=np.full((h, w), np.nan), where=count > 0)


def safe_filename(name: str, taken: set[str] | None = None) -> str:
    """A file-name-safe version of a class name (letters, digits, ``._-``), unique within ``taken`` (updated)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "class"
    candidate, i = base, 2
    while taken is not None and candidate.lower() in taken:
        candidate, i = f"{base}_{i}", i + 1
    if taken is not None:
        taken.add(candidate.lower())
    return candidate


def write_heatmaps(folder: Path, predictions: Predictions) -> list[Path]:
    """``thumbnail.png`` and ``heatmaps/<class>.png``: each class's probability over the slide thumbnail (matplotlib).

    Patches without a prediction (background) are transparent; the colour scale is fixed to [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    grid = predictions.slide["grid"]  # type: ignore[index]
    from PIL import Image

    Image.fromarray(grid.thumbnail).save(folder / "thumbnail.png")
    (folder / "heatmaps").mkdir()
    h, w = grid.mask.shape
    taken: set[str] = set()
    written = []
    for k, name in enumerate(predictions.class_names):
        heat = heat_grid(grid, predictions.ids, predictions.probs[:, k])
        fig = Figure(figsize=(8.0, 8.0 * h / w + 0.6), dpi=100)
        ax = fig.add_subplot()
        ax.imshow(grid.thumbnail)
        image = ax.imshow(np.ma.masked_invalid(heat), cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55)
        ax.set_axis_off()
        ax.set_title(f"{name}: probability per patch (threshold {predictions.thresholds[k]:.3g})")
        fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        fig.tight_layout()
        path = folder / "heatmaps" / f"{safe_filename(name, taken)}.png"
        fig.savefig(path)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _num(x: float) -> str:
    return f"{x:.8g}"


def check_output_folder(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier prediction folder (or an empty folder) at ``out_dir``."""
    check_replaceable_folder(out_dir, OUTPUT_MARKER, "output", "--out")


def write_predictions(
    out_dir: str | Path,
    predictions: Predictions,
    meta: dict[str, Any] | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write a prediction folder, whole or not at all (built under a temporary name, then renamed).

    Files for images: ``predictions.csv`` (``image`` + one probability column per class; readable by
    ``probmcl-med evaluate --scores``), ``labels.csv`` (``image,labels`` with ``|``-separated predicted classes,
    the labels style of the csv dataset). For a slide: ``patches.csv`` (``x, y, level, size`` in OpenSlide's
    convention, x/y in level-0 pixels and size in pixels of ``level``, then the probabilities and ``labels``).
    With uncertainty: ``uncertainty.csv`` (the id columns, then ``pi_<class>`` and ``var_<class>`` per class).
    A slide also gets ``thumbnail.png`` and ``heatmaps/<class>.png`` (:func:`write_heatmaps`). Always:
    ``meta.json`` (checkpoint, thresholds, classes, date, the slide grid, ...). ``extra_files(tmp_dir)`` adds more.

    Raises:
        DataError: ``out_dir`` is a file or a non-empty folder that is not an earlier prediction.
    """
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    p = predictions
    id_cols = list(p.ids[0]) if p.ids else (["image"] if p.kind == "images" else ["x", "y", "level", "size"])
    id_rows = [[row[c] for c in id_cols] for row in p.ids]
    prob_rows = [[_num(v) for v in probs] for probs in p.probs]
    document = {
        **(meta or {}),
        **({"slide": {k: v for k, v in p.slide.items() if k != "grid"}} if p.slide else {}),
        "kind": p.kind,
        "num_inputs": len(p.ids),
        "class_names": p.class_names,
        "thresholds": [float(t) for t in p.thresholds],
        "threshold_rule": "score >= threshold",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_directory(out_dir) as tmp:
        if p.kind == "images":
            (tmp / "predictions.csv").write_text(
                _csv_text(id_cols + p.class_names, [a + b for a, b in zip(id_rows, prob_rows, strict=True)])
            )
            (tmp / "labels.csv").write_text(
                _csv_text([*id_cols, "labels"], [[*a, b] for a, b in zip(id_rows, p.labels(), strict=True)])
            )
        else:
            (tmp / "patches.csv").write_text(
                _csv_text(
                    [*id_cols, *p.class_names, "labels"],
                    [[*a, *b, c] for a, b, c in zip(id_rows, prob_rows, p.labels(), strict=True)],
                )
            )
        if p.pi is not None and p.var is not None:
            header = id_cols + [f"pi_{c}" for c in p.class_names] + [f"var_{c}" for c in p.class_names]
            rows = [
                a + [_num(v) for v in pi] + [_num(v) for v in var]
                for a, pi, var in zip(id_rows, p.pi, p.var, strict=True)
            ]
            (tmp / "uncertainty.csv").write_text(_csv_text(header, rows))
            document["uncertainty"] = (
                "pi_k and var_k of the stage-1 MDN's class-k component for the encoder features: an exploratory "
                "epistemic signal, not a calibrated probability, not validated as an error predictor"
            )
        if p.kind == "slide" and p.slide is not None:
            write_heatmaps(tmp, p)
        if extra_files is not None:
            extra_files(tmp)
        (tmp / "meta.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
        (tmp / OUTPUT_MARKER).write_text("written by probmcl_med.inference.write_predictions\n")
    return out_dir
