"""Local weight files into an encoder: safetensors or torch files, loaded without arbitrary unpickling.

:func:`load_weights` accepts a plain state dict, a checkpoint nesting it (``state_dict``, ``model``, ...), this
package's model bundles and training checkpoints; strips the wrapper prefixes of DDP, torch.compile and common training
scripts; converts a published layout into the architecture's own when the encoder says how (``convert_state``: the
Phikon presets' Hugging Face keys); drops classifier-head keys. Anything else that does not fit is a one-line
:class:`~probmcl_med.errors.CheckpointError` naming the file and the first missing, unexpected or misshapen keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from probmcl_med.errors import CheckpointError, torch_load_error

WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "encoder.", "backbone.", "net.", "state_dict.")
"""Key prefixes added by DDP, torch.compile, Lightning, our own wrapper and common training scripts."""

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "net", "network")
"""Keys under which checkpoints commonly nest the weights."""


def read_state_file(path: str | Path) -> Any:
    """The object stored in a weights file, loaded without arbitrary unpickling (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; set encoder.weights to an existing file")
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"weights file {path} is not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zipfile and torch raise many types for a bad file
        raise torch_load_error(
            f"weights file {path}",
            exc,
            if_refused="if you trust its source, re-save only its tensors: "
            "torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pt')",
            if_damaged="replace it, or set encoder.weights to another file",
            path=path,
        ) from None


def _find_state_dict(obj: Any) -> Mapping[str, Tensor]:
    """The tensor mapping inside a checkpoint (nested under common keys, or our own bundle/training formats)."""
    if isinstance(obj, Mapping) and str(obj.get("format", "")).startswith("probmcl-med/"):
        if "encoder" in obj and isinstance(obj["encoder"], Mapping):  # model bundle
            return obj["encoder"]["state_dict"]
        return obj["models"]["encoder"]  # training checkpoint
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj
        nested = next((obj[k] for k in STATE_DICT_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if nested is None:
            break
        obj = nested
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise CheckpointError("no state dict (a mapping of parameter names to tensors) found")


def _strip_prefixes(state: Mapping[str, Tensor], target_keys: set[str]) -> dict[str, Tensor]:
    """Remove wrapper prefixes shared by all keys until the keys meet the target's."""
    state = dict(state)
    for _ in range(4):
        if set(state) & target_keys:
            break
        prefix = next((p for p in WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _short(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, ..." if len(keys) > n else shown


def load_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local weights file into ``encoder`` (into its backbone ``encoder.model`` when it has one).

    Accepts a plain state dict, a checkpoint nesting it (``state_dict``, ``model``, ...), our model bundles and
    training checkpoints; strips ``module.``/``model.``/``_orig_mod.`` style prefixes; applies the encoder's
    ``convert_state(state) -> state`` when it has one (a published layout into the architecture's keys); drops the
    backbone's classifier keys (``fc.*``, ``head.fc.*``, ...). Any other missing or unexpected key, or a shape
    mismatch, is an error; ``encoder.weights_hint`` (a preset's model card and file) ends its message.

    Raises:
        CheckpointError: one line naming the file and the first offending keys.
    """
    path = Path(path)
    target = getattr(encoder, "model", None)
    target = target if isinstance(target, nn.Module) else encoder
    try:
        state = _find_state_dict(read_state_file(path))
    except CheckpointError as exc:
        if str(exc).startswith("no state dict"):
            raise CheckpointError(f"weights file {path}: {exc}") from None
        raise
    target_state = target.state_dict()
    state = _strip_prefixes(state, set(target_state))
    convert = getattr(encoder, "convert_state", None)
    if callable(convert):
        state = convert(state)
    head = getattr(encoder, "classifier_name", None)
    head_prefixes = tuple(f"{h}." for h in ([head] if isinstance(head, str) else (head or [])))
    head_prefixes += ("fc.", "head.fc.", "classifier.", "head.")
    unexpected = [k for k in state if k not in target_state and not k.startswith(head_prefixes)]
    missing = [k for k in target_state if k not in state]
    wrong = [k for k in target_state if k in state and tuple(state[k].shape) != tuple(target_state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_short(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_short(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape ({_short(wrong)})")
        name = getattr(encoder, "name", type(encoder).__name__)
        hint = getattr(encoder, "weights_hint", None) or "check encoder.name and encoder.options"
        raise CheckpointError(f"weights file {path} does not fit encoder {name!r}: {'; '.join(parts)} keys; {hint}")
    target.load_state_dict({k: state[k] for k in target_state}, strict=True)
