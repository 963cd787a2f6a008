"""Loading a run configuration: YAML files, named configs, ``--set`` overrides, and one-line errors.

Example::

    cfg = load_config("configs/adp.yaml", overrides=["contrastive.tau=0.1", "dataset.root=/data/ADP"])

A bad key or value is a :class:`~probmcl_med.errors.ConfigError` of one line naming the file and the key (with close
matches for a typo).
"""

from __future__ import annotations

import contextlib
import difflib
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from probmcl_med.config.schema import RunConfig, check_epochs, check_stage_epochs
from probmcl_med.errors import ConfigError
from probmcl_med.fileio import atomic_write_text
from probmcl_med.registry import RegistryError


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """All dotted keys of a schema (for did-you-mean on unknown keys)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_schema_keys(annotation, dotted + "."))
    return keys


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first bad key, what is wrong and (for unknown keys) the close matches."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, _schema_keys(RunConfig), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        msg = f"unknown key '{key}'{hint}"
    else:
        value = first.get("input")
        detail = first["msg"].removeprefix("Value error, ")
        shown = repr(value) if not isinstance(value, dict) else "a mapping"
        msg = f"bad value {shown} for '{key}': {detail}"
    more = len(err.errors()) - 1
    extra = f" (+{more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {msg}{extra}"


def _field_for(model: type[BaseModel], key: str) -> Any:
    """The pydantic field of ``model`` written ``key`` in a config (its alias or its name), or None."""
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def is_text_key(path: list[str]) -> bool:
    """True when the schema types the key at ``path`` as text (``str`` or ``str | None``)."""
    model: type[BaseModel] = RunConfig
    for i, part in enumerate(path):
        field = _field_for(model, part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(path) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False  # inside a free-form mapping (dataset.options, encoder.options)
            model = annotation
    return annotation is str or set(get_args(annotation)) == {str, type(None)}


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names one key twice (YAML itself would keep the last silently)."""

    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        super().__init__(f"key '{key}' appears twice (lines {first_line} and {second_line}); keep one")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (merge keys ``<<`` are still allowed)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
            except TypeError:  # an unhashable key: SafeLoader reports it
                break
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """YAML text -> Python objects, refusing duplicate keys (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=StrictLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into a key path and a value.

    The value is read as YAML (``1e-4`` -> float, ``[1, 2]`` -> list, ``null`` -> None), except for keys the
    schema types as text (``output_dir``, ``dataset.root``, ``encoder.name``, ...): those keep the text as written,
    so ``--set output_dir=2024`` names the folder ``2024``; ``null`` still unsets an optional one.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set contrastive.tau=0.1")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key is empty; write e.g. contrastive.tau=0.1")
    path = key.split(".")
    try:
        value = load_yaml_text(raw) if raw.strip() else None
    except DuplicateKeyError as exc:
        raise ConfigError(f"--set {text!r}: {exc}") from None
    except yaml.YAMLError:
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


def config_search_paths() -> list[Path]:
    """Where named configs are looked up: ./configs of the working directory, then the installed package's."""
    paths = [Path.cwd() / "configs"]
    try:
        packaged = Path(str(resources.files("probmcl_med.configs")))
        paths.append(packaged)
    except (ModuleNotFoundError, TypeError):
        pass
    return paths


def find_named_config(name: str) -> Path | None:
    """``configs/NAME.yaml`` from the working directory or the installed package, or None."""
    for folder in config_search_paths():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def available_configs() -> list[str]:
    """Names of the configs that ``--dataset NAME`` can pick."""
    names: set[str] = set()
    for folder in config_search_paths():
        if folder.is_dir():
            names.update(p.stem for p in folder.glob("*.yaml"))
    return sorted(names)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or non-mapping content is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        named = find_named_config(str(path)) if path.suffix == "" else None
        if named is None:
            options = ", ".join(available_configs()) or "none"
            raise ConfigError(f"config file {path} not found (named configs available: {options})")
        path = named
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    try:
        data = load_yaml_text(text) or {}
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}")
    return data


def _drop_removed_keys(data: dict[str, Any], source: str) -> None:
    """Accept the removed ``contrastive.latent_dim`` at its old default (null, in earlier resolved configs) only.

    n, the dimension of z, is always the encoder's feature width: the likelihood is evaluated at z = h(x)
    (docs/math.md s.3), so there is nothing to choose.
    """
    section = data.get("contrastive")
    if isinstance(section, dict) and "latent_dim" in section:
        if section["latent_dim"] is not None:
            raise ConfigError(
                f"{source}: 'contrastive.latent_dim' was removed: n is always the encoder's feature width, since the "
                "likelihood is evaluated at z = h(x) (docs/math.md s.3); delete the key"
            )
        section.pop("latent_dim")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Build a validated :class:`RunConfig` from a YAML file (or defaults), then ``--set`` overrides.

    Args:
        path: YAML file, or the name of a config in configs/ (``adp``), or None for the defaults.
        overrides: ``a.b=value`` strings applied in order after the file.
        base: a dict to start from instead of a file (e.g. a resolved config read from a checkpoint).

    Raises:
        ConfigError: unknown key (with close matches), bad value, unregistered name, missing file.
    """
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        data = read_yaml(path)
        source = str(path)
    for text in overrides or []:
        key_path, value = parse_override(text)
        apply_override(data, key_path, value)
    if overrides:
        source = f"{source} (with --set)"
    _drop_removed_keys(data, source)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    except RegistryError as err:
        raise ConfigError(f"{source}: {err}") from None
    check_stage_epochs(config, source)
    check_epochs(config, source)
    return config


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically (temporary file + rename)."""
    return atomic_write_text(Path(path), config.to_yaml())
