"""Named registries: the plugin surface of probmcl-med.

A :class:`Registry` maps names to objects (functions, classes, factories). Built-in parts and plugins register
themselves with a decorator::

    from probmcl_med import SIMILARITIES

    @SIMILARITIES.register("my_sim")
    def my_sim(a, b):
        '''One line that `probmcl-med plugins` shows.'''
        ...

and the rest of the package looks them up by the name written in a config: ``SIMILARITIES.get("my_sim")``.

A registry holds what was registered with it: the built-in entries register when the module that defines them is
imported (``probmcl_med.core.similarities``, ``probmcl_med.models.encoders``, ...), so whoever looks a name up imports
that module first, an import the layer contracts can see. ``from probmcl_med import ENCODERS`` (the public API) does
so for you.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

PLUGIN_HINT = (
    "plugins are loaded from ./plugins of the working directory, from folders given with --plugins-dir or "
    "PROBMCL_MED_PLUGINS, and from installed packages (entry-point group 'probmcl_med.plugins'); "
    "`probmcl-med plugins` lists what is loaded"
)


@dataclass(frozen=True)
class FailedPlugin:
    """A plugin file (or entry point) that failed to import, the error in one line, and the names it registers."""

    source: str
    error: str
    names: tuple[str, ...]


_FAILED_PLUGINS: dict[str, FailedPlugin] = {}
"""Told by :mod:`probmcl_med.plugins`; read by :meth:`Registry.unknown_message` (shared by every registry)."""


def note_failed_plugin(source: str, error: str, names: tuple[str, ...] = ()) -> None:
    """Remember that ``source`` failed to import with ``error``; ``names``: what it would have registered."""
    _FAILED_PLUGINS[source] = FailedPlugin(source, error, tuple(names))


def forget_failed_plugin(source: str) -> None:
    """``source`` imported after all (a later load, a fixed file)."""
    _FAILED_PLUGINS.pop(source, None)


class RegistryError(KeyError):
    """A name that is not registered, or a name registered twice for different objects."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry:
    """One registered object with where it came from."""

    name: str
    obj: Any
    source: str
    summary: str


def _summary(obj: Any) -> str:
    """First line of the object's docstring, or an empty string."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _source(obj: Any) -> str:
    """Module name, or the plugin file it was loaded from."""
    module = inspect.getmodule(obj)
    if module is None:
        return getattr(obj, "__module__", "?") or "?"
    origin = getattr(module, "__probmcl_plugin_source__", None)
    if origin:
        return str(origin)
    return module.__name__


def _same_object(a: Any, b: Any) -> bool:
    """True when two objects are the same definition, also across a re-import of the same module.

    A plugin file imported again (a DataLoader worker, a DDP rank, a test that loads the folder again) creates new
    objects with the same module, qualified name and first line; that is harmless. Anything else is a conflict.
    """
    if a is b:
        return True

    def identity(obj: Any) -> tuple[Any, ...]:
        code = getattr(obj, "__code__", None)
        return (
            getattr(obj, "__module__", None),
            getattr(obj, "__qualname__", None),
            code.co_firstlineno if code is not None else None,
        )

    return identity(a)[1] is not None and identity(a) == identity(b)


class Registry:
    """A mapping from names to objects, with did-you-mean look-ups and provenance.

    Args:
        kind: what the registry holds, in words ("similarity", "dataset", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any = None, *, source: str | None = None) -> Any:
        """Register ``obj`` under ``name``; used as ``@REG.register("name")`` or ``REG.register("name", obj)``.

        Registering the same object again is a no-op. A different object under a taken name raises
        :class:`RegistryError` naming both sources.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(target: T) -> T:
            src = source or _source(target)
            existing = self._entries.get(name)
            if existing is not None:
                if _same_object(existing.obj, target):
                    self._entries[name] = Entry(name, target, existing.source, _summary(target))
                    return target
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered by {existing.source}; {src} tries to register a "
                    f"different object under the same name: rename one of them"
                )
            self._entries[name] = Entry(name, target, src, _summary(target))
            return target

        if obj is not None:
            return decorator(obj)
        return decorator

    def get(self, name: str) -> Any:
        """The object registered under ``name``; an unknown name raises with the close matches."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """One line: the unknown name, close matches, what is registered and how plugins are loaded; when a plugin
        file that registers ``name`` failed to import, that file and its error instead."""
        owners = [f for f in _FAILED_PLUGINS.values() if name in f.names]
        if owners:
            f = owners[0]
            return (
                f"{self.kind} {name!r} is registered by plugin {f.source}, which failed to import ({f.error}); "
                "fix that file (`probmcl-med plugins` shows what loaded)"
            )
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        known = ", ".join(sorted(self._entries)) or "none"
        failed = ""
        if _FAILED_PLUGINS:
            failed = "; plugins that failed to import: " + ", ".join(f.source for f in _FAILED_PLUGINS.values())
        return f"unknown {self.kind} {name!r}: {hint}registered: {known}{failed} ({PLUGIN_HINT})"

    def entry(self, name: str) -> Entry:
        """The full :class:`Entry` for ``name`` (object, source, summary)."""
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        """All entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests and interactive sessions)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


ENCODERS = Registry("encoder")
"""Encoder factories: ``f(**options) -> nn.Module`` with ``num_features`` and ``normalization`` (mean, std), whose
forward returns raw pooled features (B, num_features); built-ins registered by :mod:`probmcl_med.models.encoders`."""

OVERLAPS = Registry("overlap")
"""Label overlaps: ``f(ya (B, C), yb (M, C)) -> (B, M)`` in [0, 1]; built-ins in :mod:`probmcl_med.core.overlaps`."""

SIMILARITIES = Registry("similarity")
"""Mixture similarities: ``f(a: GaussianMixture, b: GaussianMixture) -> (len(a), len(b))`` in [0, 1]; built-ins in
:mod:`probmcl_med.core.similarities`."""

LIKELIHOODS = Registry("likelihood")
"""NLL terms: ``f(mixture: GaussianMixture, z (B, n), labels (B, C)) -> scalar`` (mean negative log-likelihood);
built-ins in :mod:`probmcl_med.core.likelihoods`."""

DATASETS = Registry("dataset")
"""Dataset factories: ``f(root, split, **options) -> MultiLabelDataset`` (items ``{"image", "label"}``); built-ins in
:mod:`probmcl_med.data.datasets`."""

ALL_REGISTRIES: dict[str, Registry] = {
    "encoders": ENCODERS,
    "overlaps": OVERLAPS,
    "similarities": SIMILARITIES,
    "likelihoods": LIKELIHOODS,
    "datasets": DATASETS,
}
