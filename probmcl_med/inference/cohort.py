"""Predicting a cohort of slides: one slide at a time, each written whole, failures recorded, writing overlapped.

``OUT`` holds :data:`~probmcl_med.inference.cohort_state.COHORT_MARKER`, one folder per slide (``OUT/<slide-id>/``,
exactly what the one-slide ``predict`` writes, plus
:data:`~probmcl_med.inference.cohort_state.RECORD_FILE`) and the summaries
(:mod:`probmcl_med.inference.cohort_report`); which slides are done and which rank predicts which is
:mod:`probmcl_med.inference.cohort_state`.

- **Written whole or not at all.** A slide's folder is built under a temporary name and renamed
  (:func:`~probmcl_med.inference.writers.write_predictions`), its record inside it.
- **Failures.** A slide that cannot be predicted or written (unreadable, no mpp, a resolution refused, a missing
  file) is a :class:`SlideResult` with status ``failed`` and its one-line reason, and the next slide follows, unless
  ``fail_fast``. A full or read-only output disk stops the run. A slide without tissue is a result (status
  ``no tissue``, empty outputs), not a failure.
- **Writing overlapped.** On a GPU the folder of slide k (heat maps, GeoJSON, CSV: seconds of CPU work on a large
  slide) is written by a background process while slide k+1 is predicted (:class:`SlideWriter`, at most one write
  pending); on the CPU the model needs the cores, and slides are written in turn.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probmcl_med.bundle import ModelBundle
from probmcl_med.data.imageio import IMAGE_SUFFIXES
from probmcl_med.data.mpp import PLAUSIBLE_MPP
from probmcl_med.errors import DataError, UserError, one_line_message
from probmcl_med.inference.cohort_inputs import CohortSlide
from probmcl_med.inference.cohort_state import RECORD_FILE, SlideOptions, read_record, settings_change, slide_settings
from probmcl_med.inference.inputs import is_slide
from probmcl_med.inference.loop import ProgressHook
from probmcl_med.inference.predict import Predictions, predict_slide
from probmcl_med.inference.writers import write_predictions

PREDICTED, NO_TISSUE, DONE, FAILED = "predicted", "no tissue", "done earlier", "failed"
"""A slide's status in this run."""

IMAGE_ONLY_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s not in (".tif", ".tiff"))
"""Extensions of images that are never slides (a TIFF may be either)."""


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


def predict_cohort_slide_patches(
    bundle: ModelBundle, slide: CohortSlide, options: SlideOptions, progress: ProgressHook | None
) -> Predictions:
    """One slide's predictions through the one-slide path, with the slide's own ``slide_mpp`` and mask (a slide
    without tissue gives Predictions without patches, ``no_tissue``).

    Raises:
        DataError: the slide cannot be predicted (the one-slide path's one-line reasons), or it is an image.
    """
    if slide.path.suffix.lower() in IMAGE_ONLY_SUFFIXES and not is_slide(slide.path):
        raise DataError(f"{slide.path} is an image, not a slide; predict images in a run of their own")
    return predict_slide(
        bundle,
        slide.path,
        patch_size=options.patch_size,
        level=options.level,
        mpp=options.mpp,
        slide_mpp=slide.slide_mpp if slide.slide_mpp is not None else options.slide_mpp,
        mask=slide.mask,
        tissue_threshold=options.tissue_threshold,
        stride=options.stride,
        threshold=options.threshold,
        batch_size=options.batch_size,
        device=options.device,
        workers=options.workers,
        uncertainty=options.uncertainty,
        skip_bad=options.skip_bad,
        progress=progress,
    )


def slide_summary(predictions: Predictions, slide: CohortSlide, slide_mpp: float | None) -> dict[str, Any]:
    """What ``cohort.csv`` says of a predicted slide.

    Returns:
        ``{"status", "mpp", "level", "tissue_mm2", "patches", "called": {class: share}, "mean_probability":
        {class: mean}, "top_class", "ood"}``: ``mpp`` the microns per pixel of the patches as read (None when the slide's
        resolution is unknown), ``tissue_mm2`` the thumbnail's tissue mask's area (pixels times the level-0 area
        of a thumbnail pixel times the level-0 mpp squared: the plan's, else ``slide_mpp``, else the declared one
        when plausible; None without one), ``called`` the share of the slide's tissue patches
        in which the class reaches its threshold, ``mean_probability`` its mean probability over them (both None
        without patches), ``top_class`` the class called in the most patches (ties: the higher mean probability),
        ``ood`` the out-of-distribution summary of the patches (:meth:`~probmcl_med.core.ood.OodAssessment.summary`;
        None when the model keeps no statistics or the slide has no patches).
    """
    grid = (predictions.slide or {})["grid"]
    plan = grid.mpp_plan
    base = plan.slide_mpp if plan is not None else slide_mpp
    if base is None and grid.declared_mpp.value is not None:  # level pixels: the declared mpp, when plausible
        lo, hi = PLAUSIBLE_MPP
        base = grid.declared_mpp.value if lo <= grid.declared_mpp.value <= hi else None
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
        "status": NO_TISSUE if predictions.no_tissue else PREDICTED,
        "mpp": mpp,
        "level": grid.level,
        "tissue_mm2": area,
        "patches": n,
        "called": {c: None if v is None else float(v) for c, v in zip(names, called, strict=True)},
        "mean_probability": {c: None if v is None else float(v) for c, v in zip(names, mean, strict=True)},
        "top_class": top,
        "ood": predictions.ood_summary if n else None,
    }


class _Named:
    """A progress hook whose passes are described by the slide's id."""

    def __init__(self, hook: ProgressHook, name: str) -> None:
        self.hook, self.name = hook, name

    def start(self, description: str, total: int) -> None:
        self.hook.start(self.name, total)

    def advance(self, count: int) -> None:
        self.hook.advance(count)


@dataclass
class SlideWrite:
    """A slide's predictions on their way to ``folder``, with its record (:data:`RECORD_FILE`) and the wall-clock
    time (``time.time()``) its prediction began."""

    slide: CohortSlide
    folder: Path
    predictions: Predictions
    meta: dict[str, Any]
    record: dict[str, Any]
    started: float


def predict_cohort_slide(
    bundle: ModelBundle,
    slide: CohortSlide,
    out: Path,
    options: SlideOptions,
    settings: dict[str, Any],
    meta: dict[str, Any],
    progress: ProgressHook | None = None,
) -> SlideWrite:
    """Predict one slide: its predictions and record, ready for :func:`write_slide` into ``out/<id>/``.

    Raises:
        DataError (and other UserErrors): the slide cannot be predicted.
    """
    started = time.time()
    hook = _Named(progress, slide.id) if progress is not None else None
    predictions = predict_cohort_slide_patches(bundle, slide, options, hook)
    slide_mpp = slide.slide_mpp if slide.slide_mpp is not None else options.slide_mpp
    record = {"id": slide.id, "path": str(slide.path), "source": slide.source, "extra": slide.extra,
              "settings": settings, "thresholds_source": meta.get("thresholds_source"),
              "summary": slide_summary(predictions, slide, slide_mpp)}  # fmt: skip
    return SlideWrite(slide, out / slide.id, predictions, {**meta, "input": str(slide.path)}, record, started)


def write_slide(job: SlideWrite) -> float:
    """Write a slide's folder whole or not at all, its record inside; returns the seconds since its prediction began
    (module level: the background writer's process runs it)."""

    def add_record(folder: Path) -> None:
        job.record["seconds"] = round(time.time() - job.started, 3)
        (folder / RECORD_FILE).write_text(json.dumps(job.record, indent=2) + "\n", encoding="utf-8")

    write_predictions(job.folder, job.predictions, job.meta, extra_files=add_record)
    return float(job.record["seconds"])


Written = tuple[SlideWrite, "float | BaseException"]
"""A finished write: the job and its seconds, or the exception it raised."""


class SlideWriter:
    """Writes slide folders one at a time, in this process or in one background process (``spawn``ed: a fork would
    copy the parent's threads and CUDA state), so that slide k is written while slide k+1 is predicted.

    :meth:`submit` hands over a job and returns the writes finished meanwhile (in this process: this one; in the
    background: the previous one, waited for, so at most one is pending and memory stays bounded);
    :meth:`drain` returns the last. If the background process dies, the write it held and every later one are done
    in this process.
    """

    def __init__(self, background: bool) -> None:
        context = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context) if background else None
        self._pending: tuple[SlideWrite, Future] | None = None

    def submit(self, job: SlideWrite) -> list[Written]:
        if self._pool is None:
            return [_run(job)]
        finished = self.drain()
        if self._pool is None:  # the background process died while the previous slide was written
            return [*finished, _run(job)]
        self._pending = (job, self._pool.submit(write_slide, job))
        return finished

    def drain(self) -> list[Written]:
        if self._pending is None:
            return []
        job, future = self._pending
        self._pending = None
        try:
            return [(job, future.result())]
        except BrokenProcessPool:  # the writer process died (killed for memory?): write here from now on
            self.close()
            self._pool = None
            return [_run(job)]
        except Exception as exc:
            return [(job, exc)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _run(job: SlideWrite) -> Written:
    try:
        return job, write_slide(job)
    except Exception as exc:
        return job, exc


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
    background: bool | None = None,
) -> list[SlideResult]:
    """Predict ``slides`` one after another into ``out``, skipping those done earlier with the same settings.

    Args:
        bundle: the loaded model.
        slides: this process's slides (:func:`~probmcl_med.inference.cohort_state.shard_slides`).
        out: the cohort folder (checked with :func:`~probmcl_med.inference.cohort_state.check_cohort_folder`).
        options: how slides are predicted.
        common: :func:`~probmcl_med.inference.cohort_state.common_settings`.
        meta: entries for every slide's meta.json (checkpoint, encoder, device).
        fail_fast: raise a slide's error instead of recording it.
        progress: the patches' progress hook (each slide's pass is named by its id).
        on_result: called with each slide's result as soon as it is known (written, failed or found done).
        background: write each slide's folder in a background process while the next is predicted (None: on a GPU,
            when there are two slides or more).

    Returns:
        One result per slide, in the order they became known.

    Raises:
        UserError: with ``fail_fast``, the first slide that fails (its message names the slide).
        OSError: the output disk is full or read-only (:data:`STOPPING_ERRNOS`).
    """
    if background is None:
        background = getattr(options.device, "type", str(options.device)) == "cuda" and len(slides) > 1
    results: list[SlideResult] = []

    def emit(result: SlideResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    def written(done: list[Written]) -> None:
        for job, outcome in done:
            if isinstance(outcome, BaseException):
                emit(_failure(job.slide, outcome, fail_fast))
            else:
                emit(SlideResult(job.slide, job.record["summary"]["status"], seconds=outcome))

    writer = SlideWriter(background)
    try:
        for slide in slides:
            settings = slide_settings(common, slide, options)
            if settings_change(read_record(out / slide.id), settings) is None:
                emit(SlideResult(slide, DONE))
                continue
            try:
                job = predict_cohort_slide(bundle, slide, out, options, settings, meta, progress)
            except Exception as exc:  # a slide's failure, whatever it is, is recorded and the run goes on
                emit(_failure(slide, exc, fail_fast))
                continue
            written(writer.submit(job))
        written(writer.drain())
    finally:
        writer.close()
    return results


def _failure(slide: CohortSlide, exc: BaseException, fail_fast: bool) -> SlideResult:
    """The failed result of ``slide``; re-raises ``exc`` with ``fail_fast`` or when the output disk is unusable."""
    if fail_fast or (isinstance(exc, OSError) and exc.errno in STOPPING_ERRNOS):
        raise exc
    if isinstance(exc, (UserError, OSError)):
        reason = one_line_message(exc)
    else:
        reason = f"unexpected {type(exc).__name__}: {one_line_message(exc)} (rerun the slide alone with --debug)"
    return SlideResult(slide, FAILED, reason=reason)


def result_from_dict(slide: CohortSlide, data: dict[str, Any]) -> SlideResult:
    """The :class:`SlideResult` of :meth:`SlideResult.to_dict` for ``slide``."""
    return SlideResult(slide, data["status"], data.get("reason", ""), float(data.get("seconds", 0.0)))
