"""The saved model as plain data: ``RUN/model.pt``, everything ``evaluate``, ``predict``, ``explain`` and ``info`` need.

The bundle (``format: probmcl-med/model``) is a dict of tensors, numbers, strings, lists and dicts, readable with
``torch.load(weights_only=True)`` (no arbitrary unpickling), written atomically (temporary file + ``os.replace``):

* ``encoder``: ``{name, options, num_features, state_dict}``, rebuilt with :func:`~probmcl_med.models.encoders.
  get_encoder` (timm names need no plugin; a plugin encoder needs its plugin, being code);
* ``head``: ``{in_features, num_classes, normalize_features, state_dict}``;
* ``mdn``: the stage-1 mixture density network's constructor spec and weights, or None (``predict --uncertainty``);
* preprocessing: ``image_size``, ``mean``, ``std`` (what the model was trained on, never recomputed), the microns
  per pixel of the network input (``mpp``: slides are read at it by default) and the Macenko stain reference
  (``stain_reference``: every input is normalised to it first, as in training);
* ``feature_cache``: the head trained on the frozen encoder's cached features, so ``evaluate`` scores through the same
  disk cache (:mod:`probmcl_med.inference.feature_cache`);
* ``class_names``. Tuned thresholds live in ``RUN/thresholds.json`` (:mod:`probmcl_med.operating_point`), written
  by ``evaluate --tune-thresholds --save``: ``model.pt`` is never rewritten after training;
* ``dataset``: where the training data came from (:class:`DatasetSource`), so ``evaluate --checkpoint`` can rebuild
  a split;
* ``config``: the run's resolved training config, a plain dict kept for information. Loading never validates it
  against the registries, so a model trained with a plugin similarity, overlap or likelihood loads for inference
  without that plugin.

:func:`read_checkpoint` and :func:`save_torch` are the weights-only reader and atomic writer that the training
states (:mod:`probmcl_med.engine.checkpoint`) use too.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probmcl_med.calibration_file import Calibration, read_calibration, thresholds_for
from probmcl_med.core.mdn import MixtureDensityNetwork
from probmcl_med.errors import CheckpointError, first_words, torch_load_error
from probmcl_med.fileio import atomic_write
from probmcl_med.models.encoders import get_encoder
from probmcl_med.models.heads import Classifier, LinearHead
from probmcl_med.operating_point import TunedThresholds, read_thresholds

BUNDLE_FORMAT = "probmcl-med/model"
FORMAT_VERSION = 1
MODEL_FILE = "model.pt"


# --------------------------------------------------------------------------------------------------------------------
# Reading and writing .pt files
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
        raise torch_load_error(
            f"checkpoint {path}",
            exc,
            if_refused="probmcl-med checkpoints hold only tensors and plain values, so it was not written by "
            "probmcl-med (or was altered)",
            if_damaged="delete it or use another one",
            path=path,
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
# The bundle
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSource:
    """Where a model's data came from: the registered dataset, its folder and options, and the split names.

    Attributes:
        name: the ``DATASETS`` name (``csv``, ``adp``, a plugin's).
        root: the dataset folder (None: the dataset's default).
        options: dataset-specific options.
        skip_bad: unreadable samples were skipped rather than fatal.
        splits: the dataset's own names for ``train``, ``valid`` and ``test``.
    """

    name: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    skip_bad: bool = False
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "valid": "valid", "test": "test"})

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> DatasetSource:
        """From a resolved run config as a plain dict (its ``dataset`` section; missing keys take the defaults)."""
        d = dict(config.get("dataset") or {})
        return cls(
            name=str(d.get("name", "demo")),
            root=None if d.get("root") is None else str(d["root"]),
            options=dict(d.get("options") or {}),
            skip_bad=bool(d.get("skip_bad", False)),
            splits={
                "train": str(d.get("train_split", "train")),
                "valid": str(d.get("val_split", "valid")),
                "test": str(d.get("test_split", "test")),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "root": self.root,
            "options": dict(self.options),
            "skip_bad": self.skip_bad,
            "splits": dict(self.splits),
        }


@dataclass
class ModelBundle:
    """Everything needed to evaluate or predict, restored from ``RUN/model.pt``.

    Attributes:
        encoder: the encoder module (eval mode), ``encoder(x)`` -> (B, H) unit-norm features.
        head: the linear head, (B, H) -> (B, C) logits.
        mdn: the mixture density network (for uncertainty), or None when the run had no contrastive term.
        class_names: C names, in the order of the logits.
        mean: per-channel normalisation mean the model was trained with (RGB, in [0, 1] units).
        std: per-channel normalisation std.
        image_size: side of the square input, pixels.
        thresholds: per-class decision thresholds (C,) from ``thresholds.json``, or None (use 0.5).
        encoder_name: the ENCODERS/timm name.
        encoder_options: the keyword arguments the encoder was built with.
        normalize_features: whether the head reads unit-norm features (two-stage) or raw pooled ones (asl mode).
        dataset: where the training data came from (rebuilds a split for ``evaluate --checkpoint``).
        training_config: the run's resolved config as a plain dict, for information (never validated on load).
        tuned: the ``thresholds.json`` that ``thresholds`` came from, or None.
        threshold_problem: why a ``thresholds.json`` beside the model was not applied (stale, malformed, tuned on a
            calibration that is gone), or None; commands that need the model's thresholds refuse with this message.
        calibration: the per-class temperatures of ``calibration.json`` (:mod:`probmcl_med.calibration_file`), applied
            by the inference loop to every probability, or None (raw sigmoid).
        calibration_problem: why a ``calibration.json`` beside the model was not applied (stale, malformed), or None;
            inference refuses with this message (``evaluate --calibrate`` refits it).
        mpp: microns per pixel of the network input the model was trained on, or None (not recorded).
        stain_reference: the Macenko stain reference (``StainReference.to_dict()``) applied to every input, or None.
        feature_cache: the head trained on cached features of the frozen encoder: scoring may read them back.
    """

    encoder: nn.Module
    head: LinearHead
    mdn: nn.Module | None
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    thresholds: list[float] | None
    encoder_name: str
    encoder_options: dict[str, Any] = field(default_factory=dict)
    normalize_features: bool = True
    dataset: DatasetSource | None = None
    training_config: dict[str, Any] = field(default_factory=dict)
    tuned: TunedThresholds | None = None
    threshold_problem: str | None = None
    calibration: Calibration | None = None
    calibration_problem: str | None = None
    mpp: float | None = None
    stain_reference: dict[str, Any] | None = None
    feature_cache: bool = False

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
    encoder_name: str,
    encoder_options: Mapping[str, Any] | None = None,
    mdn: nn.Module | None = None,
    normalize_features: bool = True,
    dataset: DatasetSource | None = None,
    training_config: Mapping[str, Any] | None = None,
    best_val_map: float | None = None,
    best_epoch: int | None = None,
    mpp: float | None = None,
    stain_reference: Mapping[str, Any] | None = None,
    feature_cache: bool = False,
) -> dict[str, Any]:
    """The plain (weights_only-loadable) dict that :func:`save_model_bundle` writes.

    ``best_val_map`` (percent) and ``best_epoch`` record which classifier epoch the saved head comes from; ``mpp``
    the microns per pixel of the network input; ``stain_reference`` the Macenko reference as a plain dict;
    ``feature_cache`` that the head trained on the frozen encoder's cached features (``evaluate`` then scores through
    the same cache, :mod:`probmcl_med.inference.feature_cache`).
    """
    head = unwrap(head)
    if len(class_names) != head.out_features:
        raise ValueError(f"{len(class_names)} class names for a head with {head.out_features} outputs")
    return {
        "format": BUNDLE_FORMAT,
        "version": FORMAT_VERSION,
        "encoder_name": encoder_name,
        "encoder": {
            "name": encoder_name,
            "options": dict(encoder_options or {}),
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
        "dataset": None if dataset is None else dataset.to_dict(),
        "config": dict(training_config or {}),
        "best_val_map": None if best_val_map is None else float(best_val_map),
        "best_epoch": None if best_epoch is None else int(best_epoch),
        "mpp": None if mpp is None else float(mpp),
        "stain_reference": None if stain_reference is None else dict(stain_reference),
        "feature_cache": bool(feature_cache),
    }


def save_model_bundle(path: str | Path, **parts: Any) -> Path:
    """Write the inference bundle atomically to ``path`` (a ``.pt`` file, or a run folder -> ``RUN/model.pt``).

    Keyword arguments are those of :func:`bundle_dict`: ``encoder, head, class_names, mean, std, image_size,
    encoder_name`` and optionally ``encoder_options, mdn, normalize_features, dataset, training_config,
    best_val_map, best_epoch, mpp, stain_reference``.
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


def load_model_bundle(path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
    """Rebuild encoder, head and (if stored) MDN from a bundle written by :func:`save_model_bundle`.

    The thresholds come from ``thresholds.json`` beside the file when there is one and it was tuned for this very
    ``model.pt`` (:func:`~probmcl_med.operating_point.read_thresholds`); a stale or malformed one is not applied and
    its problem is kept in ``threshold_problem`` (the caller decides: predict refuses, info shows it, re-tuning
    replaces it).

    Args:
        path: a run folder (its ``model.pt`` is read) or a ``.pt`` bundle.
        device: where to put the modules.

    Raises:
        CheckpointError: missing, corrupt or truncated file, a training state instead of a bundle, or weights that do
            not fit the stored architecture; one line naming the file.
    """
    path = resolve_bundle_path(path)
    data = read_checkpoint(path, expected_format=BUNDLE_FORMAT)
    enc = data["encoder"]
    options = dict(enc.get("options") or {})
    try:
        encoder = get_encoder(enc["name"], pretrained=False, weights=None, require_weights=False, **options)
        encoder.load_state_dict(enc["state_dict"], strict=True)
        head_spec = data["head"]
        head = LinearHead(int(head_spec["in_features"]), int(head_spec["num_classes"]))
        head.load_state_dict(head_spec["state_dict"], strict=True)
        spec = data.get("mdn")
        mdn = None if spec is None else MixtureDensityNetwork.from_spec(spec, spec["state_dict"]).eval()
    except (RuntimeError, KeyError) as exc:
        text = first_words(str(exc), 200)
        raise CheckpointError(
            f"checkpoint {path}: stored weights do not fit the stored architecture ({text})"
        ) from None
    names = [str(c) for c in data["class_names"]]
    if len(names) != head.out_features:
        raise CheckpointError(
            f"checkpoint {path}: {len(names)} class names for a head with {head.out_features} outputs"
        )
    training_config = dict(data.get("config") or {})
    stored_source = data.get("dataset")
    source = None if stored_source is None else DatasetSource(**stored_source)
    calibration, calibration_problem = None, None
    try:
        calibration = read_calibration(path, names)
    except CheckpointError as exc:
        calibration_problem = str(exc)
    tuned, problem = None, None
    try:
        tuned = thresholds_for(read_thresholds(path, names), calibration, path)
    except CheckpointError as exc:
        problem = str(exc)
    bundle = ModelBundle(
        encoder=encoder.eval(),
        head=head.eval(),
        mdn=mdn,
        class_names=names,
        mean=tuple(float(v) for v in data["mean"]),
        std=tuple(float(v) for v in data["std"]),
        image_size=int(data["image_size"]),
        thresholds=list(tuned.values) if tuned else None,
        encoder_name=str(data["encoder_name"]),
        encoder_options=options,
        normalize_features=bool(data["head"].get("normalize_features", True)),
        dataset=source,
        training_config=training_config,
        tuned=tuned,
        threshold_problem=problem,
        calibration=calibration,
        calibration_problem=calibration_problem,
        mpp=None if data.get("mpp") is None else float(data["mpp"]),
        stain_reference=data.get("stain_reference"),
        feature_cache=bool(data.get("feature_cache", False)),
    )
    return bundle.to(device)
