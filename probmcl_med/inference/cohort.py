"""Predicting a cohort of slides: one slide at a time, each written whole, resumable, shardable over processes.

``OUT`` holds :data:`COHORT_MARKER`, one folder per slide (``OUT/<slide-id>/``, exactly what the one-slide
``predict`` writes, plus :data:`RECORD_FILE`) and the summaries (:mod:`probmcl_med.inference.cohort_report`).

- **Written whole or not at all.** A slide's folder is built under a temporary name and renamed
  (:func:`~probmcl_med.inference.writers.write_predictions`); its :data:`RECORD_FILE` is written inside it, last
  but one, so a folder that has one is complete.
- **Resumable.** The record holds the settings that decide the slide's outputs (:func:`slide_settings`: the
  sha256 of ``model.pt``, the patch plan, the thresholds, the slide file's size and a hash of its first and last
  64 KiB, the mask's sha256). A slide whose record holds the same settings is not predicted again; any difference
  (another model, ``--mpp``, a rescanned file) predicts it again.
- **Failures.** A slide that cannot be predicted (unreadable, no mpp, a resolution refused, a missing file) is a
  :class:`SlideResult` with status ``failed`` and its one-line reason, and the next slide follows, unless
  ``fail_fast``. A slide without tissue is a result (status ``no tissue``, empty outputs), not a failure.
- **Shards.** :func:`shard_slides` splits the slides to predict over the ranks of a ``torchrun`` job: largest file
  first, each to the rank with the fewest bytes so far (every rank computes the same split).
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probmcl_med.bundle import ModelBundle
from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.slides import level0_mpp, tile_slide
from probmcl_med.errors import DataError, UserError, one_line_message
from probmcl_med.fileio import check_replaceable_folder
from probmcl_med.inference.cohort_inputs import CohortSlide
from probmcl_med.inference.loop import ProgressHook
from probmcl_med.inference.predict import Predictions, decision_thresholds, predict_slide, read_mpp
from probmcl_med.inference.writers import OUTPUT_MARKER, check_output_folder, write_predictions

COHORT_MARKER = ".probmcl-med-cohort"
"""File in every cohort output folder: such a folder may be written into again by a later cohort run."""

RECORD_FILE = "cohort.json"
"""Per slide folder: the slide's id, path, settings, summary and time (what ``cohort.csv`` is made of)."""

PREDICTED, NO_TISSUE, DONE, FAILED = "predicted", "no tissue", "done earlier", "failed"
"""A slide's status in this run."""

FINGERPRINT_BYTES = 65536

NO_TISSUE_MASK_FRACTION = 0.001
"""Interim "no tissue" rule (see :func:`predict_or_no_tissue`): below this tissue fraction of the thumbnail mask a
slide without a single tissue patch has no tissue, above it the tissue threshold or patch size is the problem."""


@dataclass(frozen=True)
class SlideOptions:
    """How every slide of the cohort is predicted (``predict``'s options; :func:`predict_slide`'s arguments).

    ``mpp`` is the resolution asked for on the command line (None: the model's, unless ``level`` is given);
    ``slide_mpp`` the level-0 resolution for slides whose manifest row gives none.
    """

    patch_size: int | None = None
    level: int | None = None
    mpp: float | None = None
    slide_mpp: float | None = None
    tissue_threshold: float = 0.5
    stride: int | None = None
    threshold: float | None = None
    batch_size: int = 32
    device: Any = "auto"
    workers: int | None = None
    uncertainty: bool = False
    skip_bad: bool = False


@dataclass
class SlideResult:
    """What one slide did in this run: ``status`` (:data:`PREDICTED`, :data:`NO_TISSUE`, :data:`DONE` or
    :data:`FAILED`), the failure's one-line ``reason``, and the wall-clock ``seconds`` it took (0 when done
    earlier)."""

    slide: CohortSlide
    status: str
    reason: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A picklable summary (sent between ranks): the slide id, status, reason and seconds."""
        return {"id": self.slide.id, "status": self.status, "reason": self.reason, "seconds": self.seconds}


def check_cohort_folder(out: Path, slides: Sequence[CohortSlide]) -> None:
    """Refuse an ``OUT`` that holds anything but an earlier cohort (or nothing), and slide folders not ours.

    Raises:
        DataError: ``OUT`` is a file, a folder with files and no :data:`COHORT_MARKER`, or ``OUT/<id>`` is a file or
            a folder that is not a prediction folder.
    """
    check_replaceable_folder(out, COHORT_MARKER, "cohort output", "--out")
    for slide in slides:
        check_output_folder(out / slide.id)


def file_fingerprint(path: Path) -> str | None:
    """sha256 of a file's size and its first and last :data:`FINGERPRINT_BYTES`, or None when it cannot be read.

    A slide's identity for resuming: cheap on a multi-gigabyte file, unchanged by a copy (unlike a modification
    time), changed by a rescan or another file under the same name.
    """
    try:
        with path.open("rb") as handle:
            size = path.stat().st_size
            head = handle.read(FINGERPRINT_BYTES)
            handle.seek(max(0, size - FINGERPRINT_BYTES))
            tail = handle.read(FINGERPRINT_BYTES)
    except OSError:
        return None
    return hashlib.sha256(str(size).encode() + b"\0" + head + b"\0" + tail).hexdigest()


def common_settings(bundle: ModelBundle, model_sha256: str, options: SlideOptions) -> dict[str, Any]:
    """The settings shared by every slide that decide its outputs (batch size, workers and device do not).

    Raises:
        What :func:`decision_thresholds` raises (a bad ``--threshold``, a stale thresholds.json).
    """
    return {
        "model_sha256": model_sha256,
        "patch_size": int(options.patch_size or bundle.image_size),
        "level": options.level,
        "mpp": read_mpp(bundle, options.mpp, options.level),
        "tissue_threshold": float(options.tissue_threshold),
        "stride": options.stride,
        "thresholds": [float(t) for t in decision_thresholds(bundle, options.threshold)],
        "uncertainty": bool(options.uncertainty),
    }


def slide_settings(common: dict[str, Any], slide: CohortSlide, options: SlideOptions) -> dict[str, Any]:
    """``common`` plus what is the slide's own: its level-0 mpp override, its mask's and its file's fingerprints."""
    mask = None
    if slide.mask is not None:
        mask = file_fingerprint(slide.mask) or str(slide.mask)
    slide_mpp = slide.slide_mpp if slide.slide_mpp is not None else options.slide_mpp
    return {**common, "slide_mpp": slide_mpp, "mask": mask, "slide_file": file_fingerprint(slide.path)}


def read_record(folder: Path) -> dict[str, Any] | None:
    """A slide folder's :data:`RECORD_FILE` when the folder is complete (marker, meta.json, record), else None."""
    if not all((folder / name).is_file() for name in (OUTPUT_MARKER, "meta.json", RECORD_FILE)):
        return None
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def settings_change(record: dict[str, Any] | None, settings: dict[str, Any]) -> str | None:
    """None when ``record`` was made with ``settings`` (the slide is done), else what differs, in words."""
    if record is None:
        return "not predicted yet"
    before = record.get("settings") or {}
    now = json.loads(json.dumps(settings))
    changed = [k for k in now if before.get(k) != now[k]] + [k for k in before if k not in now]
    if not changed:
        return None
    key = changed[0]
    return f"{key} was {before.get(key)!r}, now {now.get(key)!r}" if key != "slide_file" else "the slide file changed"


def shard_slides(slides: Sequence[CohortSlide], rank: int, world_size: int) -> list[CohortSlide]:
    """Rank ``rank``'s share of ``slides``, in their original order.

    Longest-processing-time-first on file sizes: slides sorted by size (largest first, ties by position), each given
    to the rank with the fewest bytes so far (lowest rank on ties). Deterministic, so every rank computes the same
    split without talking to the others.
    """
    sizes = []
    for i, slide in enumerate(slides):
        try:
            sizes.append((slide.path.stat().st_size, i))
        except OSError:
            sizes.append((0, i))
    load = [0] * world_size
    owner = {}
    for size, i in sorted(sizes, key=lambda t: (-t[0], t[1])):
        r = min(range(world_size), key=lambda k: (load[k], k))
        owner[i] = r
        load[r] += max(size, 1)
    return [s for i, s in enumerate(slides) if owner[i] == rank]


def _accepts(function: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(function).parameters


def predict_or_no_tissue(
    bundle: ModelBundle, slide: CohortSlide, options: SlideOptions, progress: ProgressHook | None
) -> Predictions:
    """One slide's predictions; a slide without tissue gives Predictions without patches.

    Interim, until issue 21's "no tissue is a result" is on main (then :func:`predict_slide` returns the empty
    Predictions itself and the ``except`` branch goes): the one-slide path raises its "no patch reaches the tissue
    fraction" error for a blank slide too, so here the slide is tiled again and, when its thumbnail's tissue mask
    covers less than :data:`NO_TISSUE_MASK_FRACTION`, the slide has no tissue; otherwise the error stands (a real
    threshold problem keeps its hint).

    Raises:
        DataError: the slide cannot be predicted (the one-slide path's one-line reasons).
    """
    slide_mpp = slide.slide_mpp if slide.slide_mpp is not None else options.slide_mpp
    mpp = read_mpp(bundle, options.mpp, options.level)
    kwargs: dict[str, Any] = {
        "patch_size": options.patch_size,
        "level": options.level or 0,
        "mpp": mpp,
        "slide_mpp": slide_mpp,
        "tissue_threshold": options.tissue_threshold,
        "stride": options.stride,
        "threshold": options.threshold,
        "batch_size": options.batch_size,
        "device": options.device,
        "workers": options.workers,
        "uncertainty": options.uncertainty,
        "skip_bad": options.skip_bad,
        "progress": progress,
    }
    if slide.mask is not None:
        if not _accepts(predict_slide, "mask"):
            raise DataError(
                f"{slide.source}: a mask for slide {slide.path} needs predict's --mask (issue 21), which this version "
                "lacks; leave the mask cell empty"
            )
        kwargs["mask"] = slide.mask
    size = int(options.patch_size or bundle.image_size)
    try:
        return predict_slide(bundle, slide.path, **kwargs)
    except DataError as err:
        if "reaches the tissue fraction" not in str(err):
            raise
        grid = tile_slide(slide.path, size, level=options.level or 0, stride=options.stride, mpp=mpp,
                          slide_mpp=slide_mpp, tissue_threshold=options.tissue_threshold)  # fmt: skip
        if grid.mask.mean() >= NO_TISSUE_MASK_FRACTION:
            raise
    info = {"path": str(slide.path), "level": grid.level, "patch_size": size, "patches_on_tissue": 0,
            "patches_in_grid": grid.candidates, "mpp": None if grid.mpp_plan is None else grid.mpp_plan.to_dict(),
            "no_tissue": "no tissue found", "grid": grid}  # fmt: skip
    num_classes = len(bundle.class_names)
    thresholds = decision_thresholds(bundle, options.threshold)
    return Predictions("slide", [], np.zeros((0, num_classes)), thresholds, list(bundle.class_names), slide=info)


def slide_summary(predictions: Predictions, slide: CohortSlide, slide_mpp: float | None) -> dict[str, Any]:
    """What ``cohort.csv`` says of a predicted slide.

    Returns:
        ``{"status", "mpp", "level", "tissue_mm2", "patches", "called": {class: share}, "mean_probability":
        {class: mean}, "top_class"}``: ``mpp`` the microns per pixel of the patches as read (None when the slide's
        resolution is unknown), ``tissue_mm2`` the thumbnail mask's area (pixels times the level-0 area of a
        thumbnail pixel times mpp squared, None without an mpp), ``called`` the share of the slide's tissue patches
        in which the class reaches its threshold, ``mean_probability`` its mean probability over them (both None
        without patches), ``top_class`` the class called in the most patches (ties: the higher mean probability).
    """
    info = predictions.slide or {}
    grid = info["grid"]
    try:
        base = level0_mpp(SLIDES.get(str(slide.path)), slide.path, slide_mpp)
    except DataError:
        base = None
    plan = grid.mpp_plan
    mpp = plan.mpp if plan is not None else (None if base is None else base * grid.level_downsample)
    area = None
    if base is not None:
        sx, sy = grid.downsample
        area = float(grid.mask.sum()) * sx * sy * base * base / 1e6
    n = len(predictions.ids)
    names = predictions.class_names
    called = predictions.predicted.mean(axis=0) if n else [None] * len(names)
    mean = predictions.probs.mean(axis=0) if n else [None] * len(names)
    top = None
    if n:
        top = names[max(range(len(names)), key=lambda k: (called[k], mean[k]))]
    return {
        "status": PREDICTED if n else NO_TISSUE,
        "mpp": mpp,
        "level": grid.level,
        "tissue_mm2": area,
        "patches": n,
        "called": {c: None if v is None else float(v) for c, v in zip(names, called, strict=True)},
        "mean_probability": {c: None if v is None else float(v) for c, v in zip(names, mean, strict=True)},
        "top_class": top,
    }


class _Named:
    """A progress hook whose passes are described by the slide's id."""

    def __init__(self, hook: ProgressHook, name: str) -> None:
        self.hook, self.name = hook, name

    def start(self, description: str, total: int) -> None:
        self.hook.start(self.name, total)

    def advance(self, count: int) -> None:
        self.hook.advance(count)


def predict_cohort_slide(
    bundle: ModelBundle,
    slide: CohortSlide,
    out: Path,
    options: SlideOptions,
    settings: dict[str, Any],
    meta: dict[str, Any],
    progress: ProgressHook | None = None,
) -> SlideResult:
    """Predict one slide into ``out/<id>/`` (whole or not at all) with its :data:`RECORD_FILE`.

    Raises:
        DataError (and other UserErrors): the slide cannot be predicted; nothing is written.
    """
    start = time.perf_counter()
    hook = _Named(progress, slide.id) if progress is not None else None
    predictions = predict_or_no_tissue(bundle, slide, options, hook)
    slide_mpp = slide.slide_mpp if slide.slide_mpp is not None else options.slide_mpp
    summary = slide_summary(predictions, slide, slide_mpp)
    record = {"id": slide.id, "path": str(slide.path), "source": slide.source, "extra": slide.extra,
              "settings": settings, "thresholds_source": meta.get("thresholds_source"), "summary": summary}  # fmt: skip

    def add_record(folder: Path) -> None:
        record["seconds"] = round(time.perf_counter() - start, 3)
        (folder / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    write_predictions(out / slide.id, predictions, {**meta, "input": str(slide.path)}, extra_files=add_record)
    return SlideResult(slide, summary["status"], seconds=float(record["seconds"]))


STOPPING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
"""Operating-system errors that no later slide escapes (the output disk is full or read-only): the run stops."""


def predict_cohort(
    bundle: ModelBundle,
    slides: Sequence[CohortSlide],
    out: Path,
    options: SlideOptions,
    common: dict[str, Any],
    meta: dict[str, Any],
    *,
    fail_fast: bool = False,
    progress: ProgressHook | None = None,
    on_result: Callable[[SlideResult], None] | None = None,
) -> list[SlideResult]:
    """Predict ``slides`` one after another into ``out``, skipping those done earlier with the same settings.

    Args:
        bundle: the loaded model.
        slides: this process's slides (:func:`shard_slides`).
        out: the cohort folder (checked with :func:`check_cohort_folder` by the caller).
        options: how slides are predicted.
        common: :func:`common_settings`.
        meta: entries for every slide's meta.json (checkpoint, encoder, device).
        fail_fast: raise a slide's error instead of recording it.
        progress: the patches' progress hook (each slide's pass is named by its id).
        on_result: called with each slide's result as soon as it is known.

    Raises:
        UserError: with ``fail_fast``, the first slide that fails (its message names the slide).
        OSError: the output disk is full or read-only (:data:`STOPPING_ERRNOS`).
    """
    results = []
    for slide in slides:
        settings = slide_settings(common, slide, options)
        if settings_change(read_record(out / slide.id), settings) is None:
            result = SlideResult(slide, DONE)
        else:
            try:
                result = predict_cohort_slide(bundle, slide, out, options, settings, meta, progress)
            except Exception as exc:  # a slide's failure, whatever it is, is recorded and the run goes on
                if fail_fast or (isinstance(exc, OSError) and exc.errno in STOPPING_ERRNOS):
                    raise
                result = SlideResult(slide, FAILED, reason=_reason(exc))
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (UserError, OSError)):
        return one_line_message(exc)
    return f"unexpected {type(exc).__name__}: {one_line_message(exc)} (rerun the slide alone with --debug)"


def result_from_dict(slide: CohortSlide, data: dict[str, Any]) -> SlideResult:
    """The :class:`SlideResult` of :meth:`SlideResult.to_dict` for ``slide``."""
    return SlideResult(slide, data["status"], data.get("reason", ""), float(data.get("seconds", 0.0)))


__all__ = [
    "COHORT_MARKER",
    "RECORD_FILE",
    "SlideOptions",
    "SlideResult",
    "check_cohort_folder",
    "common_settings",
    "file_fingerprint",
    "predict_cohort",
    "shard_slides",
    "slide_settings",
]
