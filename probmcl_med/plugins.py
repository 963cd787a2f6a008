"""Plugin discovery: Python files in plugin folders, and installed packages' entry points.

Where plugins come from, in this order:

1. ``./plugins`` of the working directory (when it exists),
2. every folder in the environment variable ``PROBMCL_MED_PLUGINS`` (an ``os.pathsep``-separated list),
3. folders given explicitly (``--plugins-dir``, repeatable),
4. installed packages that declare the entry-point group ``probmcl_med.plugins``.

``PROBMCL_MED_NO_AUTOLOAD=1`` turns 1, 2 and 4 off; folders given explicitly are still loaded.

Every ``*.py`` file of a folder (not starting with ``_`` or ``test_``: a plugin's tests may live beside it) is
imported by its path under a unique module name derived
from the resolved path, never as ``plugins.<name>``: two projects with a top-level ``plugins`` package would
otherwise silently import each other's code. Importing a file registers whatever it decorates. Loading the same file
twice is harmless (the module is reused).

A file that fails to import is contained: the others still load, the failure is kept (:func:`plugin_failures`,
for the CLI's one warning line per file) and told to the registries together with the names the file would have
registered (read from its source text), so that a command asking for one of those names says which file failed
instead of "unknown name". ``strict=True`` raises one :class:`~probmcl_med.errors.PluginError` naming every failure
instead. Where each call looked is kept too (:func:`searched_places`, for ``probmcl-med plugins``).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

from probmcl_med.errors import PluginError
from probmcl_med.registry import forget_failed_plugin, note_failed_plugin

ENTRY_POINT_GROUP = "probmcl_med.plugins"
ENV_PLUGIN_DIRS = "PROBMCL_MED_PLUGINS"
ENV_NO_AUTOLOAD = "PROBMCL_MED_NO_AUTOLOAD"


@dataclass(frozen=True)
class LoadedPlugin:
    """One plugin that was imported: a file (``source`` is its path) or an entry point (``source`` names it)."""

    module: str
    source: str
    kind: str  # "file" or "entry point"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that failed to import: its file (or entry point), the error in one line, the names it registers."""

    source: str
    error: str
    names: tuple[str, ...]
    exception: BaseException


@dataclass(frozen=True)
class SearchedPlace:
    """Where plugins were looked for: ``origin`` (working directory, PROBMCL_MED_PLUGINS, --plugins-dir, entry
    points), the folder or entry-point group, whether it exists and the plugin files (or entry points) found."""

    origin: str
    place: str
    exists: bool
    found: tuple[str, ...]


_loaded: dict[str, LoadedPlugin] = {}
_failures: dict[str, PluginFailure] = {}
_searched: dict[tuple[str, str], SearchedPlace] = {}
_REGISTER_CALL = re.compile(r"""\.register\(\s*(?:name\s*=\s*)?["']([^"']+)["']""")


def autoload_enabled() -> bool:
    """False when ``PROBMCL_MED_NO_AUTOLOAD`` is set to a true value (1, true, yes)."""
    return os.environ.get(ENV_NO_AUTOLOAD, "").strip().lower() not in {"1", "true", "yes", "on"}


def _folders_with_origin(extra: list[str | Path] | None, autoload: bool) -> list[tuple[str, Path]]:
    """(origin, folder) pairs to scan, deduplicated by resolved path, in load order."""
    candidates: list[tuple[str, Path]] = []
    if autoload:
        candidates.append(("working directory", Path.cwd() / "plugins"))
        env = os.environ.get(ENV_PLUGIN_DIRS, "")
        candidates.extend((ENV_PLUGIN_DIRS, Path(p).expanduser()) for p in env.split(os.pathsep) if p.strip())
    candidates.extend(("--plugins-dir", Path(p).expanduser()) for p in extra or [])
    seen: set[Path] = set()
    folders: list[tuple[str, Path]] = []
    for origin, folder in candidates:
        resolved = folder.resolve()
        if resolved not in seen:
            seen.add(resolved)
            folders.append((origin, folder))
    return folders


def plugin_folders(extra: list[str | Path] | None = None, autoload: bool | None = None) -> list[Path]:
    """The folders to scan, deduplicated by resolved path, in load order."""
    autoload = autoload_enabled() if autoload is None else autoload
    return [folder for _, folder in _folders_with_origin(extra, autoload)]


def registered_names_in(path: str | Path) -> tuple[str, ...]:
    """The names a plugin file registers, read from its source: the string first argument of every
    ``X.register("name")`` call or decorator (a file that does not parse is read with a regular expression)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return tuple(dict.fromkeys(_REGISTER_CALL.findall(text)))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register":
            args = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "name")]
            names.extend(a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    return tuple(dict.fromkeys(names))


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
    _forget_failure(str(path.resolve()))
    return module


def _record_failure(source: str, error: PluginError, names: tuple[str, ...]) -> PluginFailure:
    cause = error.__cause__ if error.__cause__ is not None else error
    text = f"{type(cause).__name__}: {cause}" if cause is not error else str(error)
    failure = PluginFailure(
        source=source, error=text.strip().splitlines()[0] if text.strip() else text, names=names, exception=error
    )
    _failures[source] = failure
    note_failed_plugin(source, failure.error, names)
    return failure


def _forget_failure(source: str) -> None:
    _failures.pop(source, None)
    forget_failed_plugin(source)


def is_plugin_file(path: Path) -> bool:
    """A ``*.py`` file not starting with ``_`` (private helpers) or ``test_`` (the plugin's own tests, run by pytest)."""
    return path.suffix == ".py" and not path.name.startswith(("_", "test_"))


def _plugin_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.py") if is_plugin_file(p))


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_points(failures: list[PluginError]) -> None:
    points = _entry_points()
    _searched[("entry points", ENTRY_POINT_GROUP)] = SearchedPlace(
        "entry points", ENTRY_POINT_GROUP, True, tuple(f"{ep.name} ({ep.value})" for ep in points)
    )
    for ep in points:
        key = f"entry-point:{ep.name}={ep.value}"
        if key in _loaded:
            continue
        source = f"entry point {ep.name} ({ep.value})"
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, ModuleType):
                obj()
        except Exception as exc:
            error = PluginError(f"plugin {source} failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            failures.append(error)
            _record_failure(source, error, ())
            continue
        _loaded[key] = LoadedPlugin(module=ep.value, source=source, kind="entry point")
        _forget_failure(source)


def load_plugins(
    extra_dirs: list[str | Path] | None = None, autoload: bool | None = None, *, strict: bool = False
) -> list[LoadedPlugin]:
    """Load every plugin file and entry point; return what was loaded.

    A file or entry point that fails to import does not stop the others: it is kept for :func:`plugin_failures`
    and told to the registries with the names it would have registered.

    Args:
        extra_dirs: folders given explicitly (``--plugins-dir``); a folder that does not exist is an error.
        autoload: override ``PROBMCL_MED_NO_AUTOLOAD`` (None reads the environment).
        strict: raise on failures (one line naming each) after all the others were loaded.

    Raises:
        PluginError: a folder of ``extra_dirs`` that does not exist; with ``strict``, any plugin that failed.
    """
    autoload = autoload_enabled() if autoload is None else autoload
    for folder in extra_dirs or []:
        if not Path(folder).expanduser().is_dir():
            raise PluginError(f"plugins folder {folder} does not exist (given with --plugins-dir)")
    failures: list[PluginError] = []
    for origin, folder in _folders_with_origin(extra_dirs, autoload):
        files = _plugin_files(folder)
        resolved = str(folder.resolve())
        _searched[(origin, resolved)] = SearchedPlace(origin, resolved, folder.is_dir(), tuple(p.name for p in files))
        for path in files:
            try:
                load_plugin_file(path)
            except PluginError as exc:
                failures.append(exc)
                _record_failure(str(path.resolve()), exc, registered_names_in(path))
    if autoload:
        _load_entry_points(failures)
    if failures and strict:
        message = "; ".join(str(f) for f in failures)
        error = PluginError(message if len(failures) == 1 else f"{len(failures)} plugins failed: {message}")
        raise error from failures[0].__cause__
    return loaded_plugins()


def loaded_plugins() -> list[LoadedPlugin]:
    """Everything loaded so far in this process."""
    return list(_loaded.values())


def plugin_failures() -> list[PluginFailure]:
    """Every plugin that failed to import in this process (and has not loaded since)."""
    return list(_failures.values())


def clear_plugin_failures() -> None:
    """Forget every recorded failure (and where plugins were looked for): a fresh start for a long-lived process."""
    for source in list(_failures):
        _forget_failure(source)
    _searched.clear()


def searched_places() -> list[SearchedPlace]:
    """Where plugins were looked for in this process, in the order of the first look."""
    return list(_searched.values())
