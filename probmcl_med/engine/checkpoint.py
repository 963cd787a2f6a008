"""Crash-proof training states: ``RUN/checkpoints/ckpt-s{stage}-{name}-e{epoch}-i{iteration}.pt``.

Each state (``format: probmcl-med/train-state``) holds the models, optimiser, scheduler, GradScaler, RNG states
(python, numpy, torch CPU and CUDA), stage/epoch/iteration and the data order (sampler seed and epoch); the last
``keep_last`` are kept. Written atomically and read with ``torch.load(weights_only=True)`` through the same helpers
as the model bundle (:func:`probmcl_med.bundle.save_torch`, :func:`probmcl_med.bundle.read_checkpoint`).

Resume policy for a damaged file (decided here, documented in the README): reading a corrupt or truncated
checkpoint raises a one-line :class:`CheckpointError` naming the file; ``--resume`` then falls back to the previous
checkpoint with a warning and leaves the damaged file in place (the resumed run overwrites it when it reaches the
same step). Nothing is ever deleted except by the ``keep_last`` rotation after a newer file was fully written.
"""

from __future__ import annotations

import random
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probmcl_med.bundle import FORMAT_VERSION, read_checkpoint, save_torch
from probmcl_med.errors import CheckpointError

STATE_FORMAT = "probmcl-med/train-state"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-s(\d+)-([a-z_]+)-e(\d+)-i(\d+)\.pt$")


# --------------------------------------------------------------------------------------------------------------------
# Random number generator states (as tensors and plain lists, so weights_only loading works)
# --------------------------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (if present) CUDA generator states, weights_only-safe."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [int(version), [int(v) for v in state], gauss],
        "numpy": [
            str(np_name),
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_cached),
        ],
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return out


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states restored for as many devices as both sides have)."""
    version, values, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((str(name), keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        for index in range(count):
            torch.cuda.set_rng_state(cuda[index], index)


# --------------------------------------------------------------------------------------------------------------------
# Rolling training checkpoints
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointName:
    """Parsed ``ckpt-s{stage_index}-{stage}-e{epoch}-i{iteration}.pt`` (epoch: completed epochs; iteration: global)."""

    path: Path
    stage_index: int
    stage: str
    epoch: int
    iteration: int

    @property
    def order(self) -> tuple[int, int]:
        return (self.stage_index, self.iteration)


def checkpoint_filename(stage_index: int, stage: str, epoch: int, iteration: int) -> str:
    return f"ckpt-s{stage_index}-{stage}-e{epoch:04d}-i{iteration:08d}.pt"


class CheckpointManager:
    """Writes training states into ``folder`` and keeps the newest ``keep_last``.

    Args:
        folder: ``RUN/checkpoints``.
        keep_last: how many files to keep (older ones are deleted only after a newer one is completely written).
    """

    def __init__(self, folder: str | Path, keep_last: int = 3) -> None:
        self.folder = Path(folder)
        self.keep_last = max(1, int(keep_last))

    def list(self) -> list[CheckpointName]:
        """Existing checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append(CheckpointName(p, int(m[1]), m[2], int(m[3]), int(m[4])))
        return sorted(found, key=lambda c: c.order)

    def save(self, state: dict[str, Any], *, stage_index: int, stage: str, epoch: int, iteration: int) -> Path:
        """Write ``state`` atomically under its canonical name, then drop all but the newest ``keep_last``."""
        path = self.folder / checkpoint_filename(stage_index, stage, epoch, iteration)
        save_torch(path, {"format": STATE_FORMAT, "version": FORMAT_VERSION, **state})
        for old in self.list()[: -self.keep_last]:
            if old.path != path:
                old.path.unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[dict[str, Any], Path] | None:
        """The newest readable checkpoint, or None when there is none.

        A damaged newest file is skipped with a warning naming it (it stays on disk); the previous one is used.

        Raises:
            CheckpointError: every checkpoint in the folder is unreadable (the message names the newest).
        """
        errors: list[CheckpointError] = []
        for entry in reversed(self.list()):
            try:
                state = read_checkpoint(entry.path, expected_format=STATE_FORMAT)
            except CheckpointError as exc:
                warnings.warn(f"{exc}; falling back to the previous checkpoint", RuntimeWarning, stacklevel=2)
                errors.append(exc)
                continue
            return state, entry.path
        if errors:
            raise CheckpointError(f"no readable checkpoint in {self.folder}: {errors[0]}")
        return None


class IncompatibleCheckpoint(CheckpointError):
    """A training state of another run (other classes or encoder); ``reason`` says what differs, without advice."""

    def __init__(self, reason: str, advice: str) -> None:
        super().__init__(f"{reason}; {advice}")
        self.reason = reason


def check_compatible(state: Mapping[str, Any], class_names: Sequence[str], encoder_name: str, path: Path) -> None:
    """Refuse a checkpoint from another run: different classes or encoder -> one-line IncompatibleCheckpoint."""
    stored = [str(c) for c in state.get("class_names", [])]
    advice = "use another --output-dir or drop --resume"
    if stored != [str(c) for c in class_names]:
        diff = (
            f"{len(stored)} classes vs {len(class_names)}" if len(stored) != len(class_names) else "class names differ"
        )
        raise IncompatibleCheckpoint(
            f"checkpoint {path} was trained on other classes ({diff}) than the configured dataset", advice
        )
    if str(state.get("encoder_name")) != str(encoder_name):
        raise IncompatibleCheckpoint(
            f"checkpoint {path} holds encoder {state.get('encoder_name')!r} but the config asks for {encoder_name!r}",
            advice,
        )


def check_same_mode(state: Mapping[str, Any], mode: str, stages: Sequence[str], path: Path) -> None:
    """Refuse a checkpoint of another mode (its stage is not this mode's stage at the same position)."""
    stored = str((state.get("config") or {}).get("mode"))
    index = int(state["stage_index"])
    if stored != mode or index >= len(stages) or state.get("stage") != stages[index]:
        raise IncompatibleCheckpoint(
            f"checkpoint {path} is of a mode-{stored} run ({state.get('stage')} stage) but the config's mode is {mode}",
            "resume with the run's mode, or use another --output-dir",
        )
