"""Any timm architecture by name with its options, as a config can write them (plain strings, numbers, booleans).

``encoder.options`` go to ``timm.create_model``; the options that take a layer class (``mlp_layer``, ``act_layer``,
``norm_layer``, ``embed_layer``, ``block_fn``) are given by name, so the config and ``model.pt`` stay plain data::

    encoder: {name: "timm:vit_huge_patch14_224",
              options: {mlp_layer: SwiGLUPacked, act_layer: SiLU, reg_tokens: 4, init_values: 1.0e-5,
                        dynamic_img_size: true, pool: cls+mean}}

A layer name is looked up in ``timm.layers``, then ``torch.nn`` (``SiLU``, ``GELU``, ``LayerNorm``), then timm's
activation names (``silu``, ``gelu_tanh``); a dotted ``timm.``/``torch.`` path also works. An option the architecture
does not take is a one-line error naming the option, the architecture and its close matches.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.layers import get_act_layer
from torch import nn

from probmcl_med.errors import ConfigError

LAYER_OPTIONS = ("mlp_layer", "act_layer", "norm_layer", "embed_layer", "block_fn")
"""Options whose value is a layer class, given by name in a config."""

OUR_OPTIONS = ("pool",)
"""Options this package reads itself (never passed to timm): token pooling."""


def _is_layer(candidate: Any) -> bool:
    """A layer class, or a partial of one (timm's ``SwiGLUPacked`` is ``partial(GluMlp, ...)``)."""
    return isinstance(candidate, type) or (
        isinstance(candidate, functools.partial) and isinstance(candidate.func, type)
    )


def resolve_layer(option: str, value: Any, architecture: str) -> Any:
    """The class (or callable) a layer option names; non-strings pass through unchanged.

    Raises:
        ConfigError: no layer of that name, naming the option, the architecture and the places searched.
    """
    if not isinstance(value, str):
        return value
    if value.startswith(("timm.", "torch.")) and "." in value:
        module_name, _, attr = value.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError):
            pass
    for namespace in (timm.layers, nn):
        candidate = getattr(namespace, value, None)
        if _is_layer(candidate):
            return candidate
    if option == "act_layer":
        try:
            found = get_act_layer(value)
        except (KeyError, ValueError, TypeError):
            found = None
        if found is not None:
            return found
    names = [n for n in dir(timm.layers) + dir(nn) if _is_layer(getattr(timm.layers, n, getattr(nn, n, None)))]
    close = difflib.get_close_matches(value, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(
        f"encoder.options.{option}={value!r} for {architecture}: no such layer in timm.layers or torch.nn; {hint}"
        "give a class name (SwiGLUPacked, SiLU, LayerNorm) or a dotted timm./torch. path"
    )


def resolve_options(architecture: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with every layer option's name replaced by its class (what ``timm.create_model`` expects)."""
    return {k: resolve_layer(k, v, architecture) if k in LAYER_OPTIONS else v for k, v in options.items()}


def _model_class(architecture: str) -> type | None:
    """The architecture's model class, built on the meta device (no memory, no weights) to find it."""
    try:
        with torch.device("meta"):
            return type(timm.create_model(architecture, pretrained=False))
    except Exception:  # an architecture that cannot build on meta: no close matches then
        return None


def option_error(architecture: str, exc: TypeError) -> ConfigError:
    """The one-line error for an option ``timm.create_model`` refused: the option, the architecture, close names."""
    text = str(exc)
    match = re.search(r"unexpected keyword argument '(\w+)'", text)
    if match is None:
        return ConfigError(f"encoder.options for {architecture}: {text.splitlines()[0] if text else 'TypeError'}")
    option = match.group(1)
    cls = _model_class(architecture)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")] if cls else []
    close = difflib.get_close_matches(option, [*accepted, *OUR_OPTIONS], n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    where = f" ({cls.__name__})" if cls else ""
    return ConfigError(
        f"encoder.options.{option}: timm's {architecture}{where} has no option {option!r}; {hint}"
        f"see the keyword arguments of {cls.__name__ if cls else 'its model class'} or remove it"
    )


def create_model(architecture: str, options: Mapping[str, Any], pretrained: bool = False) -> nn.Module:
    """``timm.create_model(architecture, num_classes=0, **options)`` with layer names resolved.

    Raises:
        ConfigError: unknown architecture, an option it does not take, a value it rejects (one line each).
    """
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ConfigError(f"timm has no architecture {architecture!r}{hint}")
    kwargs = resolve_options(architecture, options)
    kwargs.pop("num_classes", None)
    try:
        return timm.create_model(architecture, pretrained=pretrained, num_classes=0, **kwargs)
    except TypeError as exc:
        raise option_error(architecture, exc) from None
    except (AssertionError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"encoder.options for {architecture} {dict(options)}: {first}") from None
