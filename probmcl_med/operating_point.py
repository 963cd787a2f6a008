"""``RUN/thresholds.json``: a model's tuned operating point, kept beside ``model.pt`` and never inside it.

A trained model gives each class a probability; the *operating point* is the per-class threshold above which the
class is called (``score >= threshold``). Training writes ``model.pt`` once; ``evaluate --tune-thresholds RULE
--save`` writes the thresholds it tuned here, and every command that reads the model (evaluate, predict, explain,
info) reads them from here (:func:`probmcl_med.bundle.load_model_bundle`), unless ``--threshold`` is given.

The file (``format: probmcl-med/thresholds``) is plain JSON, written atomically::

    {"format": "probmcl-med/thresholds", "version": 1,
     "rule": "recall >= 0.9 per class", "split": "valid", "split_name": "valid", "samples": 400,
     "date": "2026-05-01T12:00:00+00:00",
     "model_file": "model.pt", "model_sha256": "<hex>",
     "thresholds": {"stroma": 0.31, "necrosis": 0.12, ...}}

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
    """

    values: tuple[float, ...]
    rule: str
    split: str
    split_name: str
    date: str
    model_sha256: str
    path: Path | None = None
    samples: int | None = None

    def describe(self) -> str:
        """``per class from RUN/thresholds.json (recall >= 0.9 per class, tuned on the valid split, 2026-05-01)``."""
        where = self.path if self.path is not None else THRESHOLDS_FILE
        split = self.split if self.split_name == self.split else f"{self.split} ({self.split_name})"
        return f"per class from {where} ({self.rule}, tuned on the {split} split, {self.date[:10]})"


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


def _parse(path: Path, model_path: Path, document: Any, class_names: Sequence[str]) -> TunedThresholds:
    fix = _fix(path, model_path)
    if not isinstance(document, Mapping) or document.get("format") != THRESHOLDS_FORMAT:
        raise CheckpointError(f"{path} is not a probmcl-med thresholds file (no format {THRESHOLDS_FORMAT!r}); {fix}")
    if int(document.get("version", 0)) > THRESHOLDS_VERSION:
        raise CheckpointError(f"{path} has version {document['version']}; upgrade probmcl-med to read it")
    values = document.get("thresholds")
    missing = [k for k in ("rule", "split", "date", "model_sha256") if not isinstance(document.get(k), str)]
    if missing or not isinstance(values, Mapping):
        what = ", ".join(missing) if missing else "thresholds"
        raise CheckpointError(f"{path}: missing or malformed {what}; {fix}")
    names = [str(c) for c in class_names]
    if list(values) != names:
        extra = [k for k in values if k not in names][:3]
        absent = [k for k in names if k not in values][:3]
        detail = (
            f"classes not in the model: {', '.join(extra)}"
            if extra
            else f"no threshold for {', '.join(absent)}"
            if absent
            else "the classes in another order"
        )
        raise CheckpointError(f"{path} does not match the classes of {model_path} ({detail}); {fix}")
    numbers = []
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise CheckpointError(f"{path}: threshold {value!r} of class {name!r} is not a number in [0, 1]; {fix}")
        numbers.append(float(value))
    actual = file_sha256(model_path)
    if document["model_sha256"] != actual:
        raise CheckpointError(
            f"{path} is stale: it was tuned for another {model_path.name} (sha256 {document['model_sha256'][:12]}, "
            f"this one is {actual[:12]}; the model was retrained since); {fix}"
        )
    samples = document.get("samples")
    return TunedThresholds(
        values=tuple(numbers),
        rule=document["rule"],
        split=document["split"],
        split_name=str(document.get("split_name") or document["split"]),
        date=document["date"],
        model_sha256=document["model_sha256"],
        path=path,
        samples=int(samples) if isinstance(samples, int) else None,
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
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON ({exc}); {_fix(path, model_path)}") from None
    return _parse(path, model_path, document, class_names)
