"""``RUN/calibration.json``: a model's per-class temperatures, kept beside ``model.pt`` and never inside it.

``evaluate --calibrate --save`` fits one temperature per class on the validation split
(:func:`probmcl_med.core.temperature.fit_temperatures`, Guo et al. 2017) and writes them here; every command that
reads the model (evaluate, predict, explain, info) then reports ``sigmoid(logit / T_c)`` instead of
``sigmoid(logit)`` (:func:`probmcl_med.bundle.load_model_bundle`, applied in the one inference loop) and names the
file in its output. The rules are those of ``thresholds.json`` (:mod:`probmcl_med.operating_point`): written
atomically, ``model.pt`` never rewritten, tied to the hash of the ``model.pt`` it was fitted for; a stale file is
refused with the command that refits it.

    {"format": "probmcl-med/calibration", "version": 1, "method": "temperature scaling, one temperature per class",
     "split": "valid", "split_name": "valid", "samples": 300, "date": "2026-05-01T12:00:00+00:00",
     "model_file": "model.pt", "model_sha256": "<hex>",
     "temperatures": {"stroma": 1.7, ...}, "nll_before": {...}, "nll_after": {...},
     "ece_before": {...}, "ece_after": {...}}

How it meets the thresholds: temperature scaling keeps every call at 0.5 (``z / T >= 0`` iff ``z >= 0``) and the
order of each class's scores, so it changes what a probability means, never which images a threshold of 0.5 calls.
Thresholds tuned after a calibration was saved are tuned on the calibrated probabilities and their file says so
(``"scores": "calibrated"`` and the calibration's hash); a thresholds file tuned on raw probabilities is converted
exactly to the calibrated scale (``sigmoid(logit(t) / T)``: the same images are called), and a file tuned on another
calibration is stale (:func:`probmcl_med.bundle.load_model_bundle`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from probmcl_med.core.temperature import T_MAX, T_MIN, threshold_on_calibrated_scale
from probmcl_med.errors import CheckpointError
from probmcl_med.fileio import atomic_write_text, file_sha256
from probmcl_med.operating_point import TunedThresholds, check_model_hash, per_class_numbers, read_sidecar_json

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "probmcl-med/calibration"
CALIBRATION_VERSION = 1
METHOD = "temperature scaling, one temperature per class"


@dataclass(frozen=True)
class Calibration:
    """The contents of a calibration file.

    Attributes:
        temperatures: per-class temperatures T_c > 0, in the model's class order.
        split: the split they were fitted on; ``split_name``: the dataset's own name for it.
        date: ISO time (UTC) of the fit.
        sha256: hash of the calibration file itself (what a thresholds file tuned on it records), "" before saving.
        path: the file they were read from (None when fitted in memory and not saved).
        samples: number of images they were fitted on.
    """

    temperatures: tuple[float, ...]
    split: str
    split_name: str
    date: str
    sha256: str = ""
    path: Path | None = None
    samples: int | None = None

    def describe(self) -> str:
        """``calibrated by RUN/calibration.json (per-class temperatures 0.8-2.1, fitted on the valid split, ...)``."""
        where = self.path if self.path is not None else "temperatures fitted now, not saved"
        split = self.split if self.split_name == self.split else f"{self.split} ({self.split_name})"
        low, high = min(self.temperatures), max(self.temperatures)
        return (
            f"calibrated by {where} (per-class temperatures {low:.2g}-{high:.2g}, fitted on the {split} split, "
            f"{self.date[:10]})"
        )


UNCALIBRATED = "raw sigmoid of the logits (no calibration.json: `evaluate --calibrate --save` fits one)"
"""What the commands print when a model has no calibration file."""


def describe_probabilities(calibration: Calibration | None) -> str:
    """What a command's probabilities are: the calibration file that scaled them, or the raw sigmoid."""
    return UNCALIBRATED if calibration is None else calibration.describe()


def calibration_path(model_path: str | Path) -> Path:
    """``RUN/model.pt`` -> ``RUN/calibration.json``."""
    return Path(model_path).with_name(CALIBRATION_FILE)


def refit_command(model_path: str | Path) -> str:
    """The command that refits the calibration of the run holding ``model_path``."""
    return f"probmcl-med evaluate --checkpoint {Path(model_path).parent} --calibrate --save"


def save_calibration(
    model_path: str | Path,
    class_names: Sequence[str],
    temperatures: Sequence[float],
    *,
    split: str,
    split_name: str | None = None,
    samples: int | None = None,
    diagnostics: Mapping[str, Sequence[float]] | None = None,
) -> Calibration:
    """Write ``calibration.json`` beside ``model_path`` atomically (``model.pt`` itself is not touched).

    Args:
        model_path: the ``model.pt`` the temperatures are for (its hash is recorded).
        class_names: the model's C class names.
        temperatures: C temperatures in [T_MIN, T_MAX].
        split, split_name, samples: where they were fitted.
        diagnostics: optional per-class lists kept for the reader (``nll_before``, ``ece_after``, ...).

    Raises:
        CheckpointError: C differs between names and temperatures, or a temperature outside [T_MIN, T_MAX].
    """
    model_path = Path(model_path)
    names = [str(c) for c in class_names]
    values = [float(t) for t in temperatures]
    if len(values) != len(names):
        raise CheckpointError(f"{len(values)} temperatures for the {len(names)} classes of {model_path}")
    if not all(math.isfinite(t) and T_MIN <= t <= T_MAX for t in values):
        raise CheckpointError(f"temperatures for {model_path} must lie in [{T_MIN}, {T_MAX}], got {values}")
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    document: dict[str, Any] = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "method": METHOD,
        "split": split,
        "split_name": split_name or split,
        "samples": samples,
        "date": date,
        "model_file": model_path.name,
        "model_sha256": file_sha256(model_path),
        "temperatures": dict(zip(names, values, strict=True)),
    }
    for key, per_class in (diagnostics or {}).items():
        document[key] = dict(zip(names, [float(v) for v in per_class], strict=True))
    path = calibration_path(model_path)
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return Calibration(tuple(values), split, split_name or split, date, file_sha256(path), path, samples)


def read_calibration(model_path: str | Path, class_names: Sequence[str]) -> Calibration | None:
    """The calibration file beside ``model_path``, checked against that model; None when there is none.

    Raises:
        CheckpointError: unreadable or malformed, other classes than the model's, a temperature outside
            [T_MIN, T_MAX], or stale (fitted for a ``model.pt`` with another hash). One line naming the file and the
            command that refits it.
    """
    model_path = Path(model_path)
    path = calibration_path(model_path)
    if not path.is_file():
        return None
    fix = f"refit with `{refit_command(model_path)}` or delete {path}"
    required = ("split", "date", "model_sha256")
    document = read_sidecar_json(path, model_path, fix, CALIBRATION_FORMAT, CALIBRATION_VERSION, required)
    values = per_class_numbers(
        path,
        model_path,
        document.get("temperatures"),
        class_names,
        fix,
        what="temperature",
        valid=lambda t: math.isfinite(t) and T_MIN <= t <= T_MAX,
        expect=f"a number in [{T_MIN}, {T_MAX}]",
    )
    check_model_hash(path, model_path, document["model_sha256"], fix, "fitted")
    samples = document.get("samples")
    return Calibration(
        temperatures=tuple(values),
        split=document["split"],
        split_name=str(document.get("split_name") or document["split"]),
        date=document["date"],
        sha256=file_sha256(path),
        path=path,
        samples=int(samples) if isinstance(samples, int) else None,
    )


def thresholds_for(
    tuned: TunedThresholds | None, calibration: Calibration | None, model_path: str | Path
) -> TunedThresholds | None:
    """The tuned thresholds on the scale of the probabilities the commands report (module docstring).

    Raw thresholds with no calibration, or calibrated ones with the very calibration they were tuned on, are returned
    as they are; raw thresholds with a calibration are converted exactly (``converted=True``).

    Raises:
        CheckpointError: thresholds tuned on calibrated probabilities while the calibration is gone or was refitted.
    """
    if tuned is None:
        return None
    if tuned.scores == "calibrated":
        if calibration is not None and calibration.sha256 == tuned.calibration_sha256:
            return tuned
        state = "is gone" if calibration is None else "was refitted since"
        raise CheckpointError(
            f"{tuned.path} was tuned on probabilities calibrated by a calibration.json that {state}; re-tune with "
            f"`probmcl-med evaluate --checkpoint {Path(model_path).parent} --tune-thresholds recall=0.9 --save`, "
            "delete it, or pass --threshold"
        )
    if calibration is None:
        return tuned
    values = threshold_on_calibrated_scale(tuned.values, calibration.temperatures)
    return replace(tuned, values=tuple(float(v) for v in values), converted=True)
