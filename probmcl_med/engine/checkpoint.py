"""Checkpoints: the final model bundle that ``evaluate``/``predict`` need, and crash-proof training states.

Two file kinds, both written atomically (temporary file + ``os.replace``) and both readable with
``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, tuples and dicts only: no arbitrary unpickling):

* the **model bundle** ``RUN/model.pt`` (``format: probmcl-med/model``): everything inference needs, so that
  ``probmcl-med evaluate --checkpoint RUN`` takes nothing else (encoder name and options, encoder/head/MDN weights,
  class names, normalisation mean/std, image size, the resolved config, optional per-class thresholds);
* **training states** ``RUN/checkpoints/ckpt-s{stage}-{name}-e{epoch}-i{iteration}.pt``
  (``format: probmcl-med/train-state``): models, optimiser, scheduler, GradScaler, RNG states (python, numpy, torch
  CPU and CUDA), stage/epoch/iteration and the data order (sampler seed and epoch), the last ``keep_last`` kept.

Resume policy for a damaged file (decided here, documented in the README): reading a corrupt or truncated
checkpoint raises a one-line :class:`CheckpointError` naming the file; ``--resume`` then falls back to the previous
checkpoint with a warning and leaves the damaged file in place (the resumed run overwrites it when it reaches the
same step). Nothing is ever deleted except by the ``keep_last`` rotation after a newer file was fully written.
"""

from __future__ import annotations

import io
import random
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from probmcl_med.config import RunConfig, load_config
from probmcl_med.errors import CheckpointError, ConfigError
from probmcl_med.fileio import atomic_write
from probmcl_med.models.heads import Classifier, LinearHead

BUNDLE_FORMAT = "probmcl-med/model"
STATE_FORMAT = "probmcl-med/train-state"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-s(\d+)-([a-z_]+)-e(\d+)-i(\d+)\.pt$")


# --------------------------------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------------------------------


def save_torch(path: str | Path, obj: Any) -> Path:
    """``torch.save`` atomically: serialise to memory, then temporary file, fsync, rename."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    return atomic_write(path, lambda handle: handle.write(data))


def read_checkpoint(path: str | Path, expected_format: str | None = None) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; any damage is a one-line :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zipfile, pickle and torch raise many types for a damaged file
        text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {text}); delete it or use another one"
        ) from None
    if not isinstance(obj, dict) or "format" not in obj:
        raise CheckpointError(f"checkpoint {path} is not a probmcl-med checkpoint (no 'format' entry)")
    if expected_format is not None and obj["format"] != expected_format:
        raise CheckpointError(f"checkpoint {path} is a {obj['format']!r} file, expected {expected_format!r}")
    if int(obj.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {obj['version']}; upgrade probmcl-med to read it")
    return obj


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (for state dicts with clean keys)."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):  # DistributedDataParallel
            module = module.module
        elif hasattr(module, "_orig_mod") and isinstance(module._orig_mod, nn.Module):  # torch.compile
            module = module._orig_mod
        else:
            return module


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (wrappers removed)."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(module).state_dict().items()}


# --------------------------------------------------------------------------------------------------------------------
# The model bundle
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelBundle:
    """Everything needed to evaluate or predict, restored from ``RUN/model.pt``.

    Attributes:
        encoder: the encoder module (eval mode), ``encoder(x)`` -> (B, H) unit-norm features.
        head: the linear head, (B, H) -> (B, C) logits.
        mdn: the mixture density network (for uncertainty), or None when the run had no contrastive stage.
        class_names: C names, in the order of the logits.
        mean: per-channel normalisation mean the model was trained with (RGB, in [0, 1] units).
        std: per-channel normalisation std.
        image_size: side of the square input, pixels.
        config: the resolved run configuration.
        thresholds: per-class decision thresholds (C,), or None (use 0.5).
        encoder_name: the ENCODERS/timm name.
        normalize_features: whether the head reads unit-norm features (two-stage) or raw pooled ones (asl mode).
    """

    encoder: nn.Module
    head: LinearHead
    mdn: nn.Module | None
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    config: RunConfig
    thresholds: list[float] | None
    encoder_name: str
    normalize_features: bool = True

    def classifier(self) -> Classifier:
        """Encoder + head as one module: images (B, 3, H, W) -> logits (B, C)."""
        return Classifier(self.encoder, self.head, normalize_features=self.normalize_features).eval()

    def to(self, device: str | torch.device) -> ModelBundle:
        """Move the modules to ``device`` (in place) and return self."""
        self.encoder.to(device)
        self.head.to(device)
        if self.mdn is not None:
            self.mdn.to(device)
        return self


def mdn_spec(mdn: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a MixtureDensityNetwork (``mdn.spec``), stored beside its weights."""
    mdn = unwrap(mdn)
    spec = getattr(mdn, "spec", None)
    if not isinstance(spec, dict):
        raise CheckpointError(f"cannot save the MDN: {type(mdn).__name__} has no constructor spec (mdn.spec)")
    return dict(spec)


def bundle_dict(
    *,
    encoder: nn.Module,
    head: LinearHead,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
    config: RunConfig,
    mdn: nn.Module | None = None,
    thresholds: Sequence[float] | None = None,
    encoder_name: str | None = None,
    normalize_features: bool = True,
    best_val_map: float | None = None,
    best_epoch: int | None = None,
) -> dict[str, Any]:
    """The plain (weights_only-loadable) dict that :func:`save_model_bundle` writes.

    ``best_val_map`` (percent) and ``best_epoch`` record which classifier epoch the saved head comes from.
    """
    head = unwrap(head)
    if len(class_names) != head.out_features:
        raise ValueError(f"{len(class_names)} class names for a head with {head.out_features} outputs")
    if thresholds is not None and len(thresholds) != len(class_names):
        raise ValueError(f"{len(thresholds)} thresholds for {len(class_names)} classes")
    return {
        "format": BUNDLE_FORMAT,
        "version": FORMAT_VERSION,
        "encoder_name": encoder_name or config.encoder.name,
        "encoder": {
            "name": encoder_name or config.encoder.name,
            "options": dict(config.encoder.options),
            "num_features": int(unwrap(encoder).num_features),
            "state_dict": cpu_state(encoder),
        },
        "head": {
            "in_features": int(head.in_features),
            "num_classes": int(head.out_features),
            "normalize_features": bool(normalize_features),
            "state_dict": cpu_state(head),
        },
        "mdn": None if mdn is None else {**mdn_spec(mdn), "state_dict": cpu_state(mdn)},
        "class_names": [str(c) for c in class_names],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "image_size": int(image_size),
        "config": config.to_dict(),
        "thresholds": None if thresholds is None else [float(t) for t in thresholds],
        "best_val_map": None if best_val_map is None else float(best_val_map),
        "best_epoch": None if best_epoch is None else int(best_epoch),
    }


def save_model_bundle(path: str | Path, **parts: Any) -> Path:
    """Write the inference bundle atomically to ``path`` (a ``.pt`` file, or a run folder -> ``RUN/model.pt``).

    Keyword arguments are those of :func:`bundle_dict`: ``encoder, head, class_names, mean, std, image_size,
    config`` and optionally ``mdn, thresholds, encoder_name, normalize_features, best_val_map, best_epoch``.
    """
    path = Path(path)
    if path.suffix != ".pt":
        path = path / MODEL_FILE
    return save_torch(path, bundle_dict(**parts))


def resolve_bundle_path(path: str | Path) -> Path:
    """``RUN`` -> ``RUN/model.pt``; a file stays itself. Missing -> one-line CheckpointError saying what to do."""
    path = Path(path)
    if path.is_dir():
        candidate = path / MODEL_FILE
        if not candidate.is_file():
            raise CheckpointError(
                f"{path} has no {MODEL_FILE}: the run has not finished its classifier stage; finish it with "
                f"`probmcl-med train --resume --output-dir {path}` or pass another --checkpoint"
            )
        return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass a run folder or its model.pt")
    return path


def _config_from(data: Mapping[str, Any], path: Path) -> RunConfig:
    try:
        return load_config(base=dict(data))
    except ConfigError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its stored config no longer validates ({exc}); load the plugins it was trained "
            f"with (--plugins-dir)"
        ) from None


def load_model_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild encoder, head and (if stored) MDN from a bundle written by :func:`save_model_bundle`.

    Args:
        path: a run folder (its ``model.pt`` is read) or a ``.pt`` bundle.
        device: where to put the modules.

    Raises:
        CheckpointError: missing, corrupt or truncated file, a training state instead of a bundle, or weights that do
            not fit the stored architecture; one line naming the file.
    """
    from probmcl_med.models.encoders import get_encoder

    path = resolve_bundle_path(path)
    data = read_checkpoint(path, expected_format=BUNDLE_FORMAT)
    config = _config_from(data["config"], path)
    enc = data["encoder"]
    try:
        encoder = get_encoder(enc["name"], pretrained=False, weights=None, **dict(enc.get("options") or {}))
        encoder.load_state_dict(enc["state_dict"], strict=True)
        head_spec = data["head"]
        head = LinearHead(int(head_spec["in_features"]), int(head_spec["num_classes"]))
        head.load_state_dict(head_spec["state_dict"], strict=True)
        mdn = None
        if data.get("mdn") is not None:
            from probmcl_med.core.mdn import MixtureDensityNetwork

            spec = data["mdn"]
            hidden = tuple(spec["hidden"]) if spec.get("hidden") is not None else (2048, 128)
            mdn = MixtureDensityNetwork(
                int(spec["in_features"]),
                int(spec["num_classes"]),
                latent_dim=spec.get("latent_dim"),
                hidden=hidden,
                input_norm=str(spec.get("input_norm", "none")),
            )
            mdn.load_state_dict(spec["state_dict"], strict=True)
            mdn.eval()
    except (RuntimeError, KeyError) as exc:
        text = str(exc).splitlines()[0][:200]
        raise CheckpointError(
            f"checkpoint {path}: stored weights do not fit the stored architecture ({text})"
        ) from None
    names = [str(c) for c in data["class_names"]]
    if len(names) != head.out_features:
        raise CheckpointError(
            f"checkpoint {path}: {len(names)} class names for a head with {head.out_features} outputs"
        )
    bundle = ModelBundle(
        encoder=encoder.eval(),
        head=head.eval(),
        mdn=mdn,
        class_names=names,
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        image_size=int(data["image_size"]),
        config=config,
        thresholds=None if data.get("thresholds") is None else [float(t) for t in data["thresholds"]],
        encoder_name=str(data["encoder_name"]),
        normalize_features=bool(data["head"].get("normalize_features", True)),
    )
    return bundle.to(device)


def set_bundle_thresholds(path: str | Path, thresholds: Sequence[float] | None) -> Path:
    """Store per-class thresholds (C,) in an existing bundle, atomically (``evaluate --tune-thresholds``)."""
    path = resolve_bundle_path(path)
    data = read_checkpoint(path, expected_format=BUNDLE_FORMAT)
    if thresholds is not None:
        values = [float(t) for t in thresholds]
        if len(values) != len(data["class_names"]):
            raise CheckpointError(f"{len(values)} thresholds for the {len(data['class_names'])} classes of {path}")
        if not all(0.0 <= t <= 1.0 for t in values):
            raise CheckpointError(f"thresholds for {path} must lie in [0, 1]")
        data["thresholds"] = values
    else:
        data["thresholds"] = None
    return save_torch(path, data)


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


def check_compatible(state: Mapping[str, Any], class_names: Sequence[str], encoder_name: str, path: Path) -> None:
    """Refuse a checkpoint from another run: different classes or encoder -> one-line CheckpointError."""
    stored = [str(c) for c in state.get("class_names", [])]
    if stored != [str(c) for c in class_names]:
        diff = (
            f"{len(stored)} classes vs {len(class_names)}" if len(stored) != len(class_names) else "class names differ"
        )
        raise CheckpointError(
            f"checkpoint {path} was trained on other classes ({diff}) than the configured dataset; use another "
            f"--output-dir or drop --resume"
        )
    if str(state.get("encoder_name")) != str(encoder_name):
        raise CheckpointError(
            f"checkpoint {path} holds encoder {state.get('encoder_name')!r} but the config asks for {encoder_name!r}; "
            f"use another --output-dir or drop --resume"
        )
