"""What a cohort's ``OUT`` holds and who predicts what: the settings that make a slide's outputs, records, shards.

- **Records.** Every slide folder ``OUT/<id>/`` holds :data:`RECORD_FILE`, written inside the folder before it is
  renamed into place, so a folder that has one is complete. It keeps the settings the outputs were made with
  (:func:`slide_settings`: the sha256 of ``model.pt``, the patch plan, the decision thresholds, the slide file's size
  and a hash of its first and last 64 KiB, the mask's fingerprint, the slide's ``slide_mpp``).
- **Resuming.** A slide whose record holds the same settings is done (:func:`settings_change` is None); any difference
  (another model, ``--mpp``, a rescanned file) predicts it again, and :func:`settings_change` says what changed.
- **Shards.** :func:`shard_slides` splits the slides to predict over the ranks of a ``torchrun`` job: largest file
  first, each to the rank with the fewest bytes so far (every rank computes the same split).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probmcl_med.bundle import ModelBundle
from probmcl_med.errors import DataError
from probmcl_med.inference.cohort_inputs import CohortSlide
from probmcl_med.inference.predict import decision_thresholds, patch_mpp
from probmcl_med.inference.writers import OUTPUT_MARKER, check_output_folder

COHORT_MARKER = ".probmcl-med-cohort"
"""File in every cohort output folder: such a folder may be written into again by a later cohort run."""

RECORD_FILE = "cohort.json"
"""Per slide folder: the slide's id, path, settings, summary and time (what ``cohort.csv`` is made of)."""


FINGERPRINT_BYTES = 65536


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


def check_cohort_folder(out: Path, slides: Sequence[CohortSlide]) -> None:
    """Refuse an ``OUT`` that holds anything but an earlier cohort (or nothing), and slide folders not ours.

    Raises:
        DataError: ``OUT`` is a file, a folder with files and no :data:`COHORT_MARKER`, or ``OUT/<id>`` is a file or
            a folder that is not a prediction folder.
    """
    # A cohort writes into OUT slide by slide (never replacing OUT whole, never deleting what it did not write), so
    # the marker that says "a cohort folder" is enough here; each OUT/<id>/ is an output folder with its manifest.
    if os.path.lexists(out) and not out.is_dir():
        raise DataError(f"cohort output path {out} is a file; give a folder path for --out")
    if out.is_dir() and any(out.iterdir()) and not (out / COHORT_MARKER).is_file():
        raise DataError(
            f"cohort output folder {out} holds files that are not a probmcl-med cohort output; give a new or empty "
            "folder for --out (a cohort run adds its slides to an earlier cohort's folder)"
        )
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
        What :func:`decision_thresholds` raises (a bad ``--threshold``, a stale thresholds.json) and
        :func:`patch_mpp` (``--mpp`` with ``--level``).
    """
    return {
        "model_sha256": model_sha256,
        "patch_size": int(options.patch_size or bundle.image_size),
        "level": options.level,
        "mpp": patch_mpp(bundle, options.mpp, options.level, None)[0],
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
