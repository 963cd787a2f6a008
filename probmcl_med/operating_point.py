"""``RUN/thresholds.json``: a model's tuned operating point, kept beside ``model.pt`` and never inside it.

A trained model gives each class a probability; the *operating point* is the per-class threshold above which the
class is called (``score >= threshold``). Training writes ``model.pt`` once; ``evaluate --tune-thresholds RULE
--save`` writes the thresholds it tuned here, and every command that reads the model (evaluate, predict, explain,
info) reads them from here (:func:`probmcl_med.bundle.load_model_bundle`), unless ``--threshold`` is given.

The file (``format: probmcl-med/thresholds``) is plain JSON, written atomically::

    {"format": "probmcl-med/thresholds", "version": 1,
     "rule": "recall >= 0.9 per class", "split": "valid", "split_name": "valid", "samples": 400,
     "date": "2026-05-01T12:00:00+00:00",
     "model_file": "model.pt", "model_sha256": "<hex>", "scores": "raw", "calibration_sha256": null,
     "thresholds": {"stroma": 0.31, "necrosis": 0.12, ...}}

``scores`` says which probabilities the thresholds were tuned on: ``raw`` (the sigmoid of the logits) or
``calibrated`` (by the ``calibration.json`` whose hash is ``calibration_sha256``; :mod:`probmcl_med.calibration_file`
says how the two files meet).

``model_sha256`` is the hash of the ``model.pt`` the thresholds were tuned for: a model retrained into the same run
folder no longer matches, and the file is then reported as stale (a one-line :class:`CheckpointError` saying how to
re-tune) instead of being applied to a model it was not tuned for.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from probmcl_med.errors import CheckpointError
from probmcl_med.fileio import atomic_write_text, file_sha256

THRESHOLDS_FILE = "thresholds.json"
THRESHOLDS_FORMAT = "probmcl-med/thresholds"
THRESHOLDS_VERSION = 1
DEFAULT_THRESHOLD = 0.5
"""The paper's threshold, used for every class when neither ``--threshold`` nor a thresholds file is given."""


@dataclass(frozen=True)
class TunedThresholds:
    """The contents of a thresholds file.

    Attributes:
        values: per-class thresholds in [0, 1], in the model's class order.
        rule: how they were chosen, in words (``recall >= 0.9 per class``).
        split: the split they were tuned on (``train``, ``valid`` or ``test``).
        split_name: the dataset's own name for that split.
        date: ISO time (UTC) of the tuning.
        model_sha256: hash of the ``model.pt`` they were tuned for.
        path: the file they were read from (None before saving).
        samples: number of images they were tuned on.
        scores: the probabilities they were tuned on: ``raw`` (sigmoid of the logits) or ``calibrated`` (by the
            ``calibration.json`` whose hash is ``calibration_sha256``); files without the key are ``raw``.
        converted: raw thresholds converted exactly to the calibrated scale on loading
            (:func:`probmcl_med.calibration_file.thresholds_for`).
    """

    values: tuple[float, ...]
    rule: str
    split: str
    split_name: str
    date: str
    model_sha256: str
    path: Path | None = None
    samples: int | None = None
    scores: str = "raw"
    calibration_sha256: str | None = None
    converted: bool = False

    def describe(self) -> str:
        """``per class from RUN/thresholds.json (recall >= 0.9 per class, tuned on the valid split, 2026-05-01)``."""
        where = self.path if self.path is not None else THRESHOLDS_FILE
        split = self.split if self.split_name == self.split else f"{self.split} ({self.split_name})"
        scale = (
            ", on raw probabilities, converted exactly to the calibrated scale"
            if self.converted
            else ", on calibrated probabilities"
            if self.scores == "calibrated"
            else ""
        )
        return f"per class from {where} ({self.rule}, tuned on the {split} split{scale}, {self.date[:10]})"


def thresholds_path(model_path: str | Path) -> Path:
    """``RUN/model.pt`` -> ``RUN/thresholds.json``."""
    return Path(model_path).with_name(THRESHOLDS_FILE)


def save_thresholds(
    model_path: str | Path,
    class_names: Sequence[str],
    values: Sequence[float],
    *,
    rule: str,
    split: str,
    split_name: str | None = None,
    samples: int | None = None,
    calibration_sha256: str | None = None,
) -> TunedThresholds:
    """Write ``thresholds.json`` beside ``model_path`` atomically (``model.pt`` itself is not touched).

    Args:
        model_path: the ``model.pt`` the thresholds are for (its hash is recorded).
        class_names: the model's C class names.
        values: C thresholds in [0, 1].
        rule: how they were chosen, in words.
        split: the split they were tuned on.
        split_name: the dataset's own name for it (default: ``split``).
        samples: how many images they were tuned on.
        calibration_sha256: the hash of the ``calibration.json`` whose probabilities they were tuned on, or None
            (raw probabilities).

    Returns:
        What was written, with ``path`` set.

    Raises:
        CheckpointError: C differs between names and values, or a value outside [0, 1].
    """
    model_path = Path(model_path)
    names = [str(c) for c in class_names]
    numbers = [float(v) for v in values]
    if len(numbers) != len(names):
        raise CheckpointError(f"{len(numbers)} thresholds for the {len(names)} classes of {model_path}")
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in numbers):
        raise CheckpointError(f"thresholds for {model_path} must lie in [0, 1], got {numbers}")
    tuned = TunedThresholds(
        values=tuple(numbers),
        rule=rule,
        split=split,
        split_name=split_name or split,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_sha256=file_sha256(model_path),
        path=thresholds_path(model_path),
        samples=samples,
        scores="raw" if calibration_sha256 is None else "calibrated",
        calibration_sha256=calibration_sha256,
    )
    document = {
        "format": THRESHOLDS_FORMAT,
        "version": THRESHOLDS_VERSION,
        "rule": tuned.rule,
        "split": tuned.split,
        "split_name": tuned.split_name,
        "samples": tuned.samples,
        "date": tuned.date,
        "model_file": model_path.name,
        "model_sha256": tuned.model_sha256,
        "scores": tuned.scores,
        "calibration_sha256": calibration_sha256,
        "thresholds": dict(zip(names, numbers, strict=True)),
    }
    atomic_write_text(tuned.path, json.dumps(document, indent=2) + "\n")
    return tuned


def _fix(path: Path, model_path: Path) -> str:
    run = model_path.parent
    return (
        f"re-tune with `probmcl-med evaluate --checkpoint {run} --tune-thresholds recall=0.9 --save`, delete {path}, "
        "or pass --threshold"
    )


def per_class_numbers(
    path: Path,
    model_path: Path,
    values: Any,
    class_names: Sequence[str],
    fix: str,
    *,
    what: str,
    valid: Any,
    expect: str,
) -> list[float]:
    """The values of a per-class mapping in the model's class order, each checked by ``valid(number)``
    (``expect`` says what a valid one is, for the message).

    Raises:
        CheckpointError: not a mapping, other classes or another order than the model's, or a value that is not a
            number ``valid`` accepts (one line naming the file, the class and ``fix``).
    """
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{path}: missing or malformed {what}s; {fix}")
    names = [str(c) for c in class_names]
    if list(values) != names:
        extra = [k for k in values if k not in names][:3]
        absent = [k for k in names if k not in values][:3]
        detail = (
            f"classes not in the model: {', '.join(extra)}"
            if extra
            else f"no {what} for {', '.join(absent)}"
            if absent
            else "the classes in another order"
        )
        raise CheckpointError(f"{path} does not match the classes of {model_path} ({detail}); {fix}")
    numbers = []
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not valid(float(value)):
            raise CheckpointError(f"{path}: {what} {value!r} of class {name!r} is not {expect}; {fix}")
        numbers.append(float(value))
    return numbers


def check_model_hash(path: Path, model_path: Path, recorded: str, fix: str, verb: str) -> None:
    """Refuse a sidecar file made for another ``model.pt`` (one line: both hashes, and ``fix``)."""
    actual = file_sha256(model_path)
    if recorded != actual:
        raise CheckpointError(
            f"{path} is stale: it was {verb} for another {model_path.name} (sha256 {recorded[:12]}, this one is "
            f"{actual[:12]}; the model was retrained since); {fix}"
        )


def read_sidecar_json(
    path: Path, model_path: Path, fix: str, file_format: str, version: int, required: Sequence[str]
) -> Mapping[str, Any]:
    """A sidecar JSON document beside ``model.pt`` with its format, version and ``required`` string keys checked
    (one-line errors)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON ({exc}); {fix}") from None
    if not isinstance(document, Mapping) or document.get("format") != file_format:
        raise CheckpointError(
            f"{path} is not a probmcl-med {file_format.split('/')[-1]} file (no format {file_format!r}); {fix}"
        )
    if int(document.get("version", 0)) > version:
        raise CheckpointError(f"{path} has version {document['version']}; upgrade probmcl-med to read it")
    missing = [k for k in required if not isinstance(document.get(k), str)]
    if missing:
        raise CheckpointError(f"{path}: missing or malformed {', '.join(missing)}; {fix}")
    return document


def _parse(path: Path, model_path: Path, document: Mapping[str, Any], class_names: Sequence[str]) -> TunedThresholds:
    fix = _fix(path, model_path)
    numbers = per_class_numbers(
        path,
        model_path,
        document.get("thresholds"),
        class_names,
        fix,
        what="threshold",
        valid=lambda v: 0.0 <= v <= 1.0,
        expect="a number in [0, 1]",
    )
    check_model_hash(path, model_path, document["model_sha256"], fix, "tuned")
    samples = document.get("samples")
    scores = document.get("scores", "raw")
    calibration_sha256 = document.get("calibration_sha256")
    if scores not in ("raw", "calibrated") or (scores == "calibrated" and not isinstance(calibration_sha256, str)):
        raise CheckpointError(f"{path}: scores must be raw, or calibrated with a calibration_sha256; {fix}")
    return TunedThresholds(
        values=tuple(numbers),
        rule=document["rule"],
        split=document["split"],
        split_name=str(document.get("split_name") or document["split"]),
        date=document["date"],
        model_sha256=document["model_sha256"],
        path=path,
        samples=int(samples) if isinstance(samples, int) else None,
        scores=scores,
        calibration_sha256=calibration_sha256 if scores == "calibrated" else None,
    )


def read_thresholds(model_path: str | Path, class_names: Sequence[str]) -> TunedThresholds | None:
    """The thresholds file beside ``model_path``, checked against that model; None when there is none.

    Raises:
        CheckpointError: the file is unreadable or malformed, lists other classes than the model's, holds a value
            outside [0, 1], or is stale (tuned for a ``model.pt`` with another hash). One line naming the file and
            saying how to fix it.
    """
    model_path = Path(model_path)
    path = thresholds_path(model_path)
    if not path.is_file():
        return None
    fix = _fix(path, model_path)
    required = ("rule", "split", "date", "model_sha256")
    document = read_sidecar_json(path, model_path, fix, THRESHOLDS_FORMAT, THRESHOLDS_VERSION, required)
    return _parse(path, model_path, document, class_names)
