"""Package attributes imported on first use (PEP 562), so that importing a package for its light parts does not
import its heavy ones (torch, MONAI): the command line can refuse a wrong option first."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, Sequence[str]], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports the module (a key of ``exports``) that holds ``name`` (one of its values)
    on first use of ``name`` and keeps the value in ``namespace`` (the package's ``globals()``), so the lookup happens
    once."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
