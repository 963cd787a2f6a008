"""Before training: every configured component run once on a tiny batch against its contract, and what the run
folder records about each.

:func:`check_components` runs the checks of :mod:`probmcl_med.testing` on the run's encoder (built, at the run's
image size), its training dataset (the first item), and, when the contrastive objective trains, its similarity,
overlap and likelihood (with the run's number of classes and feature width). A component that breaks its contract
is a one-line :class:`~probmcl_med.errors.ContractError` naming it and the file it came from, raised before the
run folder is written. The checks draw from their own generators, and the global random state is restored anyway,
so a run with the checks trains bit for bit as one without them.

:func:`Component.record` is what ``run.json`` keeps per component (``components``): the config key, the registered
name, where it came from, and for a plugin file its path and SHA-256, so that a result can be traced to the exact
code that produced it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the modules that register the built-in names this module looks up and names the sources of (the config accepts
# the built-in names without importing them: config.sections.BUILT_IN_NAMES)
import probmcl_med.core.likelihoods
import probmcl_med.core.overlaps
import probmcl_med.core.similarities
import probmcl_med.data.datasets
import probmcl_med.models.encoders  # noqa: F401
from probmcl_med import testing
from probmcl_med.config import RunConfig
from probmcl_med.errors import ContractError
from probmcl_med.fileio import file_sha256
from probmcl_med.registry import DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry

REGISTRY_OF = {
    "encoder": ENCODERS,
    "dataset": DATASETS,
    "similarity": SIMILARITIES,
    "overlap": OVERLAPS,
    "likelihood": LIKELIHOODS,
}


@dataclass(frozen=True)
class Component:
    """One configured component: its config key, kind, registered name and where it came from (a module, a plugin
    file's path, or ``timm`` for an encoder named by timm)."""

    key: str
    kind: str
    name: str
    source: str

    @property
    def file(self) -> Path | None:
        """The plugin file it came from, None for a module of an installed package."""
        path = Path(self.source)
        return path if path.suffix == ".py" and path.is_file() else None

    def label(self) -> str:
        """``similarity 'moment_kl' from /path/plugins/moment_matched_kl.py``."""
        return f"{self.kind} {self.name!r} from {self.source}"

    def record(self) -> dict[str, Any]:
        """What ``run.json`` keeps: key, kind, name, source and, for a plugin file, its path and SHA-256."""
        out: dict[str, Any] = {"key": self.key, "kind": self.kind, "name": self.name, "source": self.source}
        if self.file is not None:
            out["file"] = str(self.file)
            out["sha256"] = file_sha256(self.file)
        return out


def source_of(registry: Registry, name: str) -> str:
    """Where ``name`` came from: the registry entry's source, or ``timm`` for an encoder timm builds by name."""
    if name in registry:
        return registry.entry(name).source
    return "timm" if registry is ENCODERS else "?"


def label_of(registry: Registry, obj: Any) -> str:
    """``kind 'name' from source`` for a registered object found by identity (``repr`` when it is not one)."""
    for entry in registry.entries():
        if entry.obj is obj:
            return f"{registry.kind} {entry.name!r} from {entry.source}"
    return f"{registry.kind} {getattr(obj, '__name__', repr(obj))}"


def configured_components(config: RunConfig, objective: bool) -> list[Component]:
    """The components the run uses: encoder and dataset, and the contrastive objective's three when it trains
    (``objective``: a stage of this command trains NLL + lambda PCL)."""
    keys = [("encoder.name", "encoder", config.encoder.name), ("dataset.name", "dataset", config.dataset.name)]
    if objective:
        c = config.contrastive
        keys += [
            ("contrastive.similarity", "similarity", c.similarity),
            ("contrastive.overlap", "overlap", c.overlap),
            ("contrastive.likelihood", "likelihood", c.likelihood),
        ]
    return [Component(key, kind, name, source_of(REGISTRY_OF[kind], name)) for key, kind, name in keys]


def check_stage_needs(config: RunConfig, stages: Sequence[Any], encoder: Any) -> None:
    """Refuse an encoder that lacks what a stage of this command needs, naming what is missing, before training.

    Every stage reads ``encoder(x) -> (B, num_features)`` (checked by :func:`check_components`); a stage that trains
    the encoder (contrastive, joint, asl, a fine-tune) also needs parameters that take gradients.

    Raises:
        ContractError: one line naming the encoder, its source, the stage and what to do.
    """
    name = config.encoder.name
    trainable = any(p.requires_grad for p in encoder.parameters())
    for stage in stages:
        if stage.trains_encoder and not trainable:
            raise ContractError(
                f"encoder {name!r} from {source_of(ENCODERS, name)} has no trainable parameters, and the {stage.name} "
                f"stage of mode {config.mode} trains the encoder; use mode probe (a head on the frozen encoder), or "
                "an encoder with parameters that take gradients; nothing was written"
            )


@contextlib.contextmanager
def _own_random_state() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) random states as they were, whatever a component drew."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _check(component: Component, config: RunConfig, encoder: Any, dataset: Any, num_classes: int) -> None:
    kind, name, source = component.kind, component.name, component.source
    if kind == "encoder":
        testing.check_encoder(encoder, name=name, source=source, image_size=config.dataset.image_size)
        return
    if kind == "dataset":
        testing.check_dataset(dataset, name=name, source=source)
        return
    shape = {  # the contrastive components: read only when the run trains the contrastive objective
        "components": num_classes,
        "dim": int(encoder.num_features),
        "directions": config.contrastive.component_means == "learned_directions",
        "mean_dim": config.contrastive.mean_dim,
    }
    if kind == "similarity":
        testing.check_similarity(SIMILARITIES.get(name), name=name, source=source, **shape)
    elif kind == "overlap":
        testing.check_overlap(OVERLAPS.get(name), name=name, source=source, classes=num_classes)
    elif kind == "likelihood":
        testing.check_likelihood(LIKELIHOODS.get(name), name=name, source=source, **shape)


def check_components(
    config: RunConfig, encoder: Any, dataset: Any, num_classes: int, objective: bool
) -> list[Component]:
    """Run every configured component once on a tiny batch against its contract; return the components.

    Args:
        config: the run's config.
        encoder: the built encoder (checked in eval mode at ``dataset.image_size``; its mode is restored).
        dataset: the built training dataset (its first item's keys and types; no image is read).
        num_classes: C, the mixtures' number of components.
        objective: a stage of this command trains the contrastive objective (its components are checked then only).

    Raises:
        ContractError: one line naming the component, its file and what is wrong; nothing has been written.
    """
    components = configured_components(config, objective)
    with _own_random_state():
        for component in components:
            try:
                _check(component, config, encoder, dataset, num_classes)
            except ContractError as exc:
                raise ContractError(
                    f"{exc}; training did not start and nothing was written "
                    f"(test it with probmcl_med.testing.check_{component.kind})"
                ) from exc
    return components
