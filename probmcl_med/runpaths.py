"""Where a run's model is, found without loading anything heavy: a wrong path is refused before torch is imported.

The commands that read a model (evaluate, predict, explain, info, export, compare) resolve ``--checkpoint`` here
first, so a typo costs a fraction of a second, not the import of torch, MONAI and timm
(``benchmarks/bench_refusal.py``).
"""

from __future__ import annotations

from pathlib import Path

from probmcl_med.errors import CheckpointError

MODEL_FILE = "model.pt"
"""The inference bundle inside a run folder."""


def resolve_bundle_path(path: str | Path, option: str = "--checkpoint") -> Path:
    """``RUN`` -> ``RUN/model.pt``; a file stays itself. Missing -> one-line CheckpointError saying what to do
    (``option``: how the command takes the path, named in the message)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / MODEL_FILE
        if not candidate.is_file():
            raise CheckpointError(
                f"{path} has no {MODEL_FILE}: the run has not finished its classifier stage; finish it with "
                f"`probmcl-med train --resume --output-dir {path}` or pass another {option}"
            )
        return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass a run folder or its model.pt as {option}")
    return path
