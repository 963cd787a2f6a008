"""Plugin discovery: Python files in plugin folders, and installed packages' entry points.

Where plugins come from, in this order:

1. ``./plugins`` of the working directory (when it exists),
2. every folder in the environment variable ``PROBMCL_MED_PLUGINS`` (an ``os.pathsep``-separated list),
3. folders given explicitly (``--plugins-dir``, repeatable),
4. installed packages that declare the entry-point group ``probmcl_med.plugins``.

``PROBMCL_MED_NO_AUTOLOAD=1`` turns 1, 2 and 4 off; folders given explicitly are still loaded.

Every ``*.py`` file of a folder (not starting with ``_``) is imported by its path under a unique module name derived
from the resolved path, never as ``plugins.<name>``: two projects with a top-level ``plugins`` package would
otherwise silently import each other's code. Importing a file registers whatever it decorates. Loading the same file
twice is harmless (the module is reused). A file that fails to import does not stop the others; after all are tried,
one :class:`~probmcl_med.errors.PluginError` names each failure with its exception.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

from probmcl_med.errors import PluginError

ENTRY_POINT_GROUP = "probmcl_med.plugins"
ENV_PLUGIN_DIRS = "PROBMCL_MED_PLUGINS"
ENV_NO_AUTOLOAD = "PROBMCL_MED_NO_AUTOLOAD"


@dataclass(frozen=True)
class LoadedPlugin:
    """One plugin that was imported: a file (``source`` is its path) or an entry point (``source`` names it)."""

    module: str
    source: str
    kind: str  # "file" or "entry point"


_loaded: dict[str, LoadedPlugin] = {}


def autoload_enabled() -> bool:
    """False when ``PROBMCL_MED_NO_AUTOLOAD`` is set to a true value (1, true, yes)."""
    return os.environ.get(ENV_NO_AUTOLOAD, "").strip().lower() not in {"1", "true", "yes", "on"}


def plugin_folders(extra: list[str | Path] | None = None, autoload: bool | None = None) -> list[Path]:
    """The folders to scan, deduplicated by resolved path, in load order."""
    autoload = autoload_enabled() if autoload is None else autoload
    candidates: list[Path] = []
    if autoload:
        candidates.append(Path.cwd() / "plugins")
        env = os.environ.get(ENV_PLUGIN_DIRS, "")
        candidates.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p.strip())
    candidates.extend(Path(p).expanduser() for p in extra or [])
    seen: set[Path] = set()
    folders: list[Path] = []
    for folder in candidates:
        resolved = folder.resolve()
        if resolved not in seen:
            seen.add(resolved)
            folders.append(folder)
    return folders


def module_name_for(path: Path) -> str:
    """A module name unique to the file's resolved path: ``probmcl_med_plugin_<hash>_<stem>``."""
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() else "_" for c in resolved.stem)
    return f"probmcl_med_plugin_{digest}_{stem}"


def load_plugin_file(path: str | Path) -> ModuleType:
    """Import one plugin file by path (once; a second call returns the same module).

    Raises:
        PluginError: the file is missing or raised while importing (the original exception is the cause).
    """
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"plugin file {path} does not exist")
    name = module_name_for(path)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {path} cannot be imported (not a Python source file)")
    module = importlib.util.module_from_spec(spec)
    module.__probmcl_plugin_source__ = str(path.resolve())  # type: ignore[attr-defined]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise PluginError(f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    _loaded[name] = LoadedPlugin(module=name, source=str(path.resolve()), kind="file")
    return module


def _plugin_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_plugins(extra_dirs: list[str | Path] | None = None, autoload: bool | None = None) -> list[LoadedPlugin]:
    """Load every plugin file and entry point; return what was loaded.

    Args:
        extra_dirs: folders given explicitly (``--plugins-dir``); a folder that does not exist is an error.
        autoload: override ``PROBMCL_MED_NO_AUTOLOAD`` (None reads the environment).

    Raises:
        PluginError: one line naming every plugin that failed, after all the others were loaded.
    """
    autoload = autoload_enabled() if autoload is None else autoload
    for folder in extra_dirs or []:
        if not Path(folder).expanduser().is_dir():
            raise PluginError(f"plugins folder {folder} does not exist (given with --plugins-dir)")
    failures: list[PluginError] = []
    for folder in plugin_folders(extra_dirs, autoload):
        for path in _plugin_files(folder):
            try:
                load_plugin_file(path)
            except PluginError as exc:
                failures.append(exc)
    if autoload:
        for ep in _entry_points():
            key = f"entry-point:{ep.name}={ep.value}"
            if key in _loaded:
                continue
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, ModuleType):
                    obj()
            except Exception as exc:
                failures.append(
                    PluginError(f"plugin entry point {ep.name!r} ({ep.value}) failed: {type(exc).__name__}: {exc}")
                )
                failures[-1].__cause__ = exc
                continue
            _loaded[key] = LoadedPlugin(
                module=ep.value, source=f"entry point {ep.name} ({ep.value})", kind="entry point"
            )
    if failures:
        message = "; ".join(str(f) for f in failures)
        error = PluginError(message if len(failures) == 1 else f"{len(failures)} plugins failed: {message}")
        raise error from failures[0].__cause__
    return loaded_plugins()


def loaded_plugins() -> list[LoadedPlugin]:
    """Everything loaded so far in this process."""
    return list(_loaded.values())
