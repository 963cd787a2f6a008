"""Devices: the one rule that turns a ``device`` setting (config key or ``--device``) into a torch device.

Training, evaluation, prediction and explanation all go through :func:`resolve_device`, so ``auto``, ``cuda`` and a
missing GPU mean the same everywhere.
"""

from __future__ import annotations

import torch

from probmcl_med.errors import ConfigError


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for a ``device`` setting (config key or ``--device``), the one rule for every command.

    ``auto``/None -> CUDA when available, else CPU; a bare ``cuda`` -> ``cuda:LOCAL_RANK`` (this rank's GPU under
    torchrun, GPU 0 otherwise); anything else as given (``cpu``, ``cuda:1``).

    Raises:
        ConfigError: not a device name, or a CUDA device where CUDA is not available.
    """
    name = "auto" if name is None else str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
