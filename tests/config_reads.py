"""A read-recording view of a RunConfig, for checking which keys a training mode reads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

NEVER_READ = {
    "two-stage": {"epochs"},
    "asl": {"contrastive", "classifier.epochs", "classifier.cache_features"},
    "joint": {
        "contrastive.epochs",
        "contrastive.weight_decay",
        "classifier.epochs",
        "classifier.augment",
        "classifier.cache_features",
    },
}
"""Per mode, the keys its training must not read (written out here, from the modes' documented behaviour)."""


class Recorder:
    """Forwards attribute reads to a config (or one of its sections) and notes each key read, dotted (``a.b``)."""

    def __init__(self, obj: BaseModel, seen: set[str], prefix: str = "") -> None:
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_seen", seen)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        field = type(self._obj).model_fields.get(name)
        if field is None:  # a method (to_dict, model_dump, ...), not a key
            return value
        path = self._prefix + (field.alias or name)
        if isinstance(value, BaseModel):
            return Recorder(value, self._seen, path + ".")
        self._seen.add(path)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a recorded config is read-only")


def recording(config: BaseModel) -> tuple[Any, set[str]]:
    """``(view, seen)``: pass ``view`` where the config goes; ``seen`` fills with the keys read."""
    seen: set[str] = set()
    return Recorder(config, seen), seen


def reads_outside(mode: str, seen: set[str]) -> set[str]:
    """The keys in ``seen`` that ``mode`` must not read."""
    return {key for key in seen for never in NEVER_READ[mode] if key == never or key.startswith(never + ".")}
