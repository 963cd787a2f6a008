"""Reading config files: YAML that refuses duplicate keys, named configs (``--dataset NAME`` -> ``configs/NAME.yaml``),
and one-line errors naming the file and the line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from probmcl_med.errors import ConfigError


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
    """A YAML mapping from ``path``; a missing or empty file, or non-mapping content, is a one-line ConfigError."""
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
        data = load_yaml_text(text)
    except DuplicateKeyError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None or data == {}:  # an empty file is a mistake (a wrong path, a failed copy), not "all defaults"
        raise ConfigError(
            f"{path}: the config file is empty; write the keys of your run into it (see configs/demo.yaml), or leave "
            "out --config to train with the defaults"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}")
    return data
