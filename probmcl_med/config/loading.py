"""Loading a run config: a YAML file (or a named config), then ``--set`` overrides, validated into its mode's model.

Example::

    cfg = load_config("configs/adp.yaml", overrides=["contrastive.tau=0.1", "dataset.root=/data/ADP"])

Every key is judged against the mode the config ends up with (:mod:`probmcl_med.config.schema`):

- a key no mode has (a typo) or a bad value: a one-line :class:`~probmcl_med.errors.ConfigError` naming the file and
  the key, with close matches;
- a key of another mode given with ``--set``: a ConfigError naming the mode and the modes that read it (the run would
  ignore it);
- a key of another mode in the config file: one warning line (:class:`ConfigWarning`), and the key is dropped;
- ``--set mode=X`` on a config of another mode: one warning line naming the keys of the old mode it dropped.
"""

from __future__ import annotations

import contextlib
import difflib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from probmcl_med.config.files import DuplicateKeyError, load_yaml_text, read_yaml
from probmcl_med.config.schema import (
    ALL_KEYS,
    DEFAULT_MODE,
    MODE_CONFIGS,
    MODE_KEYS,
    RunConfig,
    field_annotation,
    field_info,
    is_section,
    length_keys,
    modes_reading,
    run_config_adapter,
    same_meaning,
)
from probmcl_med.errors import ConfigError
from probmcl_med.fileio import atomic_write_text
from probmcl_med.registry import RegistryError


class ConfigWarning(UserWarning):
    """A config file key the run's mode does not read (dropped), or the keys a ``--set mode=`` dropped."""


class DroppedSet(ConfigWarning):
    """An optional ``--set`` (:func:`load_config`'s ``optional``) that the run's mode does not read, dropped.

    Attributes:
        text: the ``--set`` text.
        mode: the mode that does not read it.
    """

    def __init__(self, text: str, mode: str) -> None:
        super().__init__(f"--set {text}: mode {mode} does not read it; dropped")
        self.text, self.mode = text, mode


def is_text_key(path: list[str]) -> bool:
    """True when some mode types the key at ``path`` as text (``str`` or ``str | None``)."""
    for mode in MODE_CONFIGS:
        annotation = field_annotation(mode, path)
        if annotation is str or set(get_args(annotation)) == {str, type(None)}:
            return True
    return False


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a value.

    The value is read as YAML (``1e-4`` -> float, ``[1, 2]`` -> list, ``null`` -> None), except for keys the
    schema types as text (``output_dir``, ``dataset.root``, ``encoder.name``, ...): those keep the text as written,
    so ``--set output_dir=2024`` names the folder ``2024``; ``null`` still unsets an optional one.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set classifier.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key is empty; write e.g. classifier.lr=0.01")
    path = key.split(".")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set {text!r}: {exc}") from None
    except Exception:  # not YAML: the text itself
        value = raw
    if is_text_key(path):
        if value is not None and not isinstance(value, str):
            value = raw.strip()
    elif isinstance(value, str):
        # YAML reads 1e-4 as a string; numbers should be numbers.
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    return path, value


def apply_override(data: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``data[path[0]][path[1]]... = value``, creating sections as needed (validation comes later)."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a mapping, descending into the schema's sections only."""
    out = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        out.append(dotted)
        if isinstance(value, dict) and is_section(dotted):
            out.extend(_keys(value, dotted + "."))
    return out


def _pop(data: dict[str, Any], dotted: str) -> None:
    *sections, last = dotted.split(".")
    node = data
    for part in sections:
        node = node[part]
    node.pop(last, None)


def _unread(data: dict[str, Any], mode: str, previous: str | None = None) -> list[str]:
    """The outermost keys of ``data`` that another mode reads and ``mode`` does not (``contrastive``, not each of
    its keys, when the whole section is another mode's); with ``previous``, also the keys ``mode`` holds with
    another meaning than ``previous`` does (:func:`~probmcl_med.config.schema.same_meaning`)."""
    keys = MODE_KEYS[mode]
    found: list[str] = []
    for key in _keys(data):
        if key not in ALL_KEYS or any(key.startswith(f + ".") for f in found):
            continue
        if key in keys and (previous is None or same_meaning(key, mode, previous)):
            continue
        found.append(key)
    return found


def _readers(key: str) -> str:
    return ", ".join(modes_reading(key))


def _unread_hint(key: str, mode: str) -> str:
    if key == "epochs" or key.endswith(".epochs"):
        lengths = " and ".join(length_keys(mode))
        return f"; mode {mode}'s length is {lengths}"
    return f"; drop it, or set the mode that reads it (--set mode={modes_reading(key)[0]})"


def _format_validation_error(err: ValidationError, source: str, mode: str) -> str:
    """One line naming the first bad key, what is wrong and (for unknown keys) the close matches."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] == mode:  # the discriminated union's tag
        loc = loc[1:]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, sorted(MODE_KEYS[mode]), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        msg = f"unknown key '{key}'{hint}"
    else:
        value = first.get("input")
        detail = first["msg"].removeprefix("Value error, ")
        shown = repr(value) if not isinstance(value, dict) else "a mapping"
        field = field_info(mode, loc)
        what = f" (mode {mode}: {field.description})" if field is not None and field.description else ""
        msg = f"bad value {shown} for '{key}': {detail}{what}"
    more = len(err.errors()) - 1
    extra = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {msg}{extra}"


def _mode_of(data: dict[str, Any], source: str) -> str:
    mode = data.get("mode", DEFAULT_MODE)
    if mode not in MODE_CONFIGS:
        raise ConfigError(f"{source}: bad value {mode!r} for 'mode': use one of {', '.join(MODE_CONFIGS)}")
    return str(mode)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    optional: Sequence[str] = (),
) -> RunConfig:
    """Build the validated config of its mode from a YAML file (or defaults, or ``base``), then ``--set`` overrides.

    Args:
        path: YAML file, or the name of a config in configs/ (``adp``), or None for the defaults.
        overrides: ``a.b=value`` strings applied in order after the file.
        base: a mapping to start from instead of a file (e.g. a resolved config read from a run folder).
        optional: those of ``overrides`` that apply only where the mode reads their key (a sweep's ``--set`` over
            grid points of several modes); elsewhere they are dropped with a :class:`DroppedSet` warning.

    Raises:
        ConfigError: an unknown key (with close matches), a bad value, an unregistered name, a missing or empty file,
            a ``--set`` key the mode does not read.

    Warns:
        ConfigWarning: keys of the file that the mode does not read (dropped), the keys a ``--set mode=`` dropped.
    """
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
    before = _mode_of(data, source)
    from_set: dict[str, str] = {}  # dotted key -> the --set text that gave it
    for text in overrides or []:
        key_path, value = parse_override(text)
        apply_override(data, key_path, value)
        from_set[".".join(key_path)] = text
    mode = _mode_of(data, f"{source} (with --set)" if overrides else source)
    _refuse_unknown(data, f"{source} (with --set)" if overrides else source)
    if mode != before:
        dropped = [k for k in _unread(data, mode, before) if not _given_by_set(k, from_set)]
        for key in dropped:
            _pop(data, key)
        if dropped:
            warnings.warn(
                f"--set mode={mode}: dropped the keys of mode {before} that mode {mode} does not read, or reads with "
                f"another meaning: {', '.join(dropped)}",
                ConfigWarning,
                stacklevel=2,
            )
    unread = _unread(data, mode)
    for key in unread:
        text = _given_by_set(key, from_set)
        if text is not None and text in optional:
            _pop(data, key)
            warnings.warn(DroppedSet(text, mode), stacklevel=2)
        elif text is not None:
            raise ConfigError(
                f"--set {text}: mode {mode} does not read '{key}' (read by {_readers(key)}){_unread_hint(key, mode)}"
            )
    unread = _unread(data, mode)  # what is left came from the file
    if unread:
        for key in unread:
            _pop(data, key)
        listed = ", ".join(f"{k} (read by {_readers(k)})" for k in unread)
        warnings.warn(f"{source}: mode {mode} does not read {listed}; ignored", ConfigWarning, stacklevel=2)
    if overrides:
        source = f"{source} (with --set)"
    data["mode"] = mode
    try:
        return run_config_adapter().validate_python(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, mode)) from None
    except RegistryError as err:
        raise ConfigError(f"{source}: {err}") from None


def _refuse_unknown(data: dict[str, Any], source: str) -> None:
    """A key no mode has (a typo, also inside a section the mode does not read): one line with the close matches."""
    unknown = [key for key in _keys(data) if key not in ALL_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(ALL_KEYS), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        more = f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ConfigError(f"{source}: unknown key '{key}'{hint}{more}")


def _given_by_set(key: str, from_set: dict[str, str]) -> str | None:
    """The ``--set`` text that gave ``key`` or a key inside it, or None."""
    for dotted, text in from_set.items():
        if dotted == key or dotted.startswith(key + "."):
            return text
    return None


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically (temporary file + rename)."""
    return atomic_write_text(Path(path), config.to_yaml())
