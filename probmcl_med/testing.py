"""Contract checks for plugin authors: run a component once on a tiny batch and say what breaks its contract.

The same checks run before every training run on each configured component (``probmcl_med.engine.preflight``), so
a plugin that passes them here passes them there. Use them in a test next to your plugin::

    from probmcl_med.testing import check_similarity

    def test_my_similarity():
        check_similarity(my_sim)            # raises ContractError, in one line, naming what is wrong

Each function raises :class:`~probmcl_med.errors.ContractError` (a one-line message) and returns the value it
checked. The contracts (plugins/README.md, the registries' docstrings):

- similarity ``f(a, b) -> (len(a), len(b))``: finite, within [0, 1] up to rounding (:data:`TOLERANCE`), 1 for
  identical mixtures and symmetric (``f(a, b) = f(b, a)^T``) to :data:`PROPERTY_TOLERANCE`, differentiable in the
  mixtures (finite gradients, not all zero); a ``log_form`` it exposes must be the log of its values;
- overlap ``f(ya (B, C), yb (M, C)) -> (B, M)``: finite, within [0, 1] (a row without labels included);
- likelihood ``f(mixture, z (B, n), labels (B, C)) -> scalar``: a finite 0-d tensor, with finite gradients;
- encoder (a module, or a factory of one): ``forward((B, 3, S, S)) -> (B, num_features)`` finite, unit-norm rows,
  and a ``normalization`` of (mean, std), three positive stds;
- dataset: ``len > 0``, ``class_names`` (distinct strings), items ``{"image", "label"}`` with a (C,) 0/1 float label
  and an image that is a path, a slide location ``{"path", ...}`` or an (H, W, 3) array.

The inputs are drawn from a local generator (``seed``): a check never touches the global random state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.errors import ContractError

TOLERANCE = 1e-4
"""How far outside [0, 1] a value may be and still count as rounding."""

PROPERTY_TOLERANCE = 1e-3
"""How far a similarity of identical mixtures may be from 1, and ``f(a, b)`` from ``f(b, a)^T``, and still count as
rounding (float32 mixture math in a few hundred dimensions)."""

__all__ = [
    "PROPERTY_TOLERANCE",
    "TOLERANCE",
    "ContractError",
    "check_dataset",
    "check_encoder",
    "check_likelihood",
    "check_overlap",
    "check_similarity",
    "random_mixture",
]


def _name(fn: Any, name: str | None, kind: str, source: str | None = None) -> str:
    label = f"{kind} {name or getattr(fn, '__name__', type(fn).__name__)!r}"
    return f"{label} from {source}" if source else label


def _call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except ContractError:
        raise
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ContractError(f"{what} raised {type(exc).__name__}: {message} (on a tiny batch)") from exc


def _tensor(what: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise ContractError(f"{what} returned {type(value).__name__}, not a torch.Tensor")
    return value


def _finite(what: str, value: Tensor, noun: str = "values") -> None:
    bad = ~torch.isfinite(value.detach())
    if bad.any():
        kinds = sorted({"nan" if torch.isnan(v) else "inf" for v in value.detach().reshape(-1)[bad.reshape(-1)]})
        raise ContractError(
            f"{what} returned non-finite {noun} ({' and '.join(kinds)}: {int(bad.sum())} of {bad.numel()})"
        )


def _unit_interval(what: str, value: Tensor) -> None:
    lo, hi = float(value.detach().min()), float(value.detach().max())
    if lo < -TOLERANCE or hi > 1 + TOLERANCE:
        raise ContractError(f"{what} returned values in [{lo:.4g}, {hi:.4g}]; they must lie in [0, 1]")


def _shape(what: str, value: Tensor, expected: tuple[int, ...], meaning: str) -> None:
    if tuple(value.shape) != expected:
        raise ContractError(f"{what} returned shape {tuple(value.shape)}; expected {expected} ({meaning})")


def random_mixture(
    batch: int,
    components: int,
    dim: int,
    *,
    directions: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    mean_dim: int = 1,
) -> tuple[GaussianMixture, list[Tensor]]:
    """A batch of mixtures like the MDN's (weights by softmax, variances >= 1) and its leaf tensors (which get
    gradients). With ``directions``, component means along shared unit directions (docs/math.md s.2b); with
    ``mean_dim`` d > 1, ``(B, C, d)`` block means (s.2c)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, components, generator=g, dtype=dtype).requires_grad_(True)
    shape = (batch, components) if mean_dim == 1 else (batch, components, mean_dim)
    means = (0.3 * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_(True)
    variances = (1.0 + 2.0 * torch.rand(batch, components, generator=g, dtype=dtype)).requires_grad_(True)
    units = None
    if directions:
        units = torch.nn.functional.normalize(torch.randn(components, dim, generator=g, dtype=dtype), dim=1)
    logw = torch.log_softmax(logits, dim=1)
    mixture = GaussianMixture(logw.exp(), means, variances, dim, logw=logw, directions=units)
    return mixture, [logits, means, variances]


def check_similarity(
    fn: Callable[[GaussianMixture, GaussianMixture], Tensor],
    *,
    name: str | None = None,
    source: str | None = None,
    components: int = 3,
    dim: int = 16,
    directions: bool = False,
    seed: int = 0,
    mean_dim: int = 1,
) -> Tensor:
    """Run a similarity on 4 x 3 pairs of mixtures: shape (4, 3), finite, in [0, 1], differentiable; then on
    identical mixtures (1, the same object and a copy) and both ways round (symmetric).

    Args:
        fn: the similarity ``(a, b) -> (len(a), len(b))``.
        name: how messages call it (default: its ``__name__``); ``source``: where it came from (a plugin file).
        components, dim: the mixtures' C and n (the run's classes and feature width).
        directions: mixtures with learned mean directions (``contrastive.component_means: learned_directions``).
        seed: the inputs' seed.
        mean_dim: numbers per component mean (``contrastive.mean_dim``).

    Raises:
        ContractError: what is wrong, in one line.
    """
    what = _name(fn, name, "similarity", source)
    a, params_a = random_mixture(4, components, dim, directions=directions, seed=seed, mean_dim=mean_dim)
    b, params_b = random_mixture(3, components, dim, directions=directions, seed=seed + 1, mean_dim=mean_dim)
    value = _tensor(what, _call(what, fn, a, b))
    _shape(what, value, (4, 3), "one value per pair: (len(a), len(b))")
    _finite(what, value)
    _unit_interval(what, value)
    if not value.requires_grad:
        raise ContractError(
            f"{what} is not differentiable: its output has no gradient (computed with .item(), numpy or under "
            "torch.no_grad?); the contrastive loss trains through it"
        )
    _call(what, lambda: value.sum().backward())
    grads = [p.grad for p in (*params_a, *params_b) if p.grad is not None]
    if not grads or not any(bool(g.abs().sum() > 0) for g in grads):
        raise ContractError(f"{what} is not differentiable: the gradient with respect to the mixtures is zero")
    for g in grads:
        _finite(what, g, "gradients")
    _check_similarity_properties(what, fn, a, b, value.detach())
    return value.detach()


def _check_similarity_properties(what: str, fn: Callable[..., Tensor], a: Any, b: Any, value: Tensor) -> None:
    """Sim(p, p) = 1 (the mixture itself and a copy of it), Sim(a, b) = Sim(b, a)^T, and an exposed ``log_form``
    equal to the log of the values: the contrastive loss assumes all three (a positive pair of identical views is
    the best possible pair, and pairs are scored the same whichever is the anchor)."""
    with torch.no_grad():
        a = a.detach()
        for label, other in (("itself", a), ("a copy of itself", a.to(torch.float32)._map(torch.clone))):
            same = _tensor(what, _call(what, fn, a, other)).detach().diagonal()
            worst = float((same - 1).abs().max())
            if not worst <= PROPERTY_TOLERANCE:
                raise ContractError(
                    f"{what} is not 1 for a mixture compared with {label} (off by up to {worst:.3g}): a similarity of "
                    "identical mixtures must be 1"
                )
        swapped = _tensor(what, _call(what, fn, b.detach(), a)).detach()
        _shape(what, swapped, (len(b), len(a)), "one value per pair: (len(b), len(a))")
        gap = float((swapped.T - value).abs().max())
        if not gap <= PROPERTY_TOLERANCE:
            raise ContractError(
                f"{what} is not symmetric: f(a, b) and f(b, a) differ by up to {gap:.3g}; the loss scores a pair the "
                "same whichever mixture is the anchor"
            )
        log_form = getattr(fn, "log_form", None)
        if log_form is not None:
            logged = _tensor(f"{what}'s log_form", _call(f"{what}'s log_form", log_form, a, b.detach())).detach()
            off = float((logged.exp() - value).abs().max())
            if not off <= PROPERTY_TOLERANCE:
                raise ContractError(f"{what}'s log_form is not the log of its values (exp differs by up to {off:.3g})")


def check_overlap(
    fn: Callable[[Tensor, Tensor], Tensor],
    *,
    name: str | None = None,
    source: str | None = None,
    classes: int = 4,
    seed: int = 0,
) -> Tensor:
    """Run a label overlap on 5 x 4 label sets (one without any label): shape (5, 4), finite, in [0, 1].

    Raises:
        ContractError: what is wrong, in one line.
    """
    what = _name(fn, name, "overlap", source)
    g = torch.Generator().manual_seed(seed)
    ya = (torch.rand(5, classes, generator=g) < 0.4).float()
    yb = (torch.rand(4, classes, generator=g) < 0.4).float()
    ya[0] = 0.0
    ya[1, 0] = yb[1, 0] = 1.0
    value = _tensor(what, _call(what, fn, ya, yb))
    _shape(what, value, (5, 4), "one value per pair of label sets: (len(ya), len(yb))")
    _finite(what, value)
    _unit_interval(what, value)
    return value.detach()


def check_likelihood(
    fn: Callable[[GaussianMixture, Tensor, Tensor], Tensor],
    *,
    name: str | None = None,
    source: str | None = None,
    components: int = 3,
    dim: int = 16,
    directions: bool = False,
    seed: int = 0,
    mean_dim: int = 1,
) -> Tensor:
    """Run a likelihood on 6 mixtures, unit-norm points and labels (some shared, one empty): a finite scalar with
    finite gradients.

    Raises:
        ContractError: what is wrong, in one line.
    """
    what = _name(fn, name, "likelihood", source)
    mixture, params = random_mixture(6, components, dim, directions=directions, seed=seed, mean_dim=mean_dim)
    g = torch.Generator().manual_seed(seed + 1)
    z = torch.nn.functional.normalize(torch.randn(6, dim, generator=g), dim=1).requires_grad_(True)
    labels = (torch.rand(6, components, generator=g) < 0.5).float()
    labels[0] = 0.0
    labels[1:3] = 1.0
    value = _tensor(what, _call(what, fn, mixture, z, labels))
    if value.ndim != 0:
        raise ContractError(f"{what} returned shape {tuple(value.shape)}; expected a scalar (a mean over the batch)")
    _finite(what, value, "value")
    if value.requires_grad:
        _call(what, value.backward)
        for grad in (t.grad for t in (z, *params) if t.grad is not None):
            _finite(what, grad, "gradients")
    return value.detach()


def check_encoder(
    encoder: nn.Module | Callable[[], nn.Module],
    *,
    name: str | None = None,
    source: str | None = None,
    image_size: int = 32,
    seed: int = 0,
) -> Tensor:
    """Run an encoder (or build one from a factory) on 2 images in eval mode: (2, num_features) finite rows (raw
    pooled features: the models that need unit-norm rows normalise them), and a (mean, std) ``normalization``. The
    module's train/eval mode is restored.

    Raises:
        ContractError: what is wrong, in one line.
    """
    what = _name(encoder, name, "encoder", source)
    module = encoder if isinstance(encoder, nn.Module) else _call(what, encoder)
    if not isinstance(module, nn.Module):
        raise ContractError(f"{what}: the factory returned {type(module).__name__}, not a torch.nn.Module")
    for attr in ("num_features", "normalization"):
        if not hasattr(module, attr):
            raise ContractError(f"{what} has no {attr!r} attribute (see plugins/README.md)")
    width = int(module.num_features)
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)).to(device)
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            h = _tensor(what, _call(what, module, x))
    finally:
        module.train(was_training)
    _shape(what, h, (2, width), "one row of num_features per image")
    _finite(what, h, "features")
    mean, std = module.normalization
    if len(mean) != 3 or len(std) != 3 or not all(float(s) > 0 for s in std):
        raise ContractError(f"{what}: normalization must be ((3 means), (3 positive stds)), got {(mean, std)}")
    return h.detach()


def _check_image(what: str, image: Any) -> None:
    if isinstance(image, str | Path):
        return
    if isinstance(image, dict):
        if "path" not in image:
            raise ContractError(f"{what}: a slide location item needs a 'path' key, got keys {sorted(image)}")
        return
    array = np.asarray(image) if isinstance(image, np.ndarray) else None
    if array is None or array.ndim != 3 or array.shape[2] != 3:
        raise ContractError(
            f"{what}: an item's image must be a path, a slide location {{'path', ...}} or an (H, W, 3) array, "
            f"got {type(image).__name__}"
        )


def check_dataset(dataset: Any, *, name: str | None = None, source: str | None = None) -> dict[str, Any]:
    """Check a built dataset: size, class names and its first item's keys and types (nothing is read).

    Args:
        dataset: what a ``DATASETS`` factory returned (a ``MultiLabelDataset`` or alike: ``items``, ``class_names``).
        name: how messages call it; ``source``: where its factory came from.

    Returns:
        The first item.

    Raises:
        ContractError: what is wrong, in one line.
    """
    what = _name(dataset, name or getattr(dataset, "name", None), "dataset", source)
    names = getattr(dataset, "class_names", None)
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
        raise ContractError(f"{what}: class_names must be a non-empty list of strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ContractError(f"{what}: class_names has duplicates: {list(names)}")
    if len(dataset) == 0:
        raise ContractError(f"{what} has no items")
    items = getattr(dataset, "items", None)
    item = items[0] if isinstance(items, list | tuple) and items else None
    if not isinstance(item, dict) or not {"image", "label"} <= set(item):
        keys = sorted(item) if isinstance(item, dict) else type(item).__name__
        raise ContractError(f"{what}: items must be dicts with 'image' and 'label', the first has {keys}")
    _check_image(what, item["image"])
    label = np.asarray(item["label"])
    if label.shape != (len(names),):
        raise ContractError(f"{what}: the first label has shape {label.shape}; expected ({len(names)},), one per class")
    if not np.issubdtype(label.dtype, np.floating) or not np.isin(label, (0.0, 1.0)).all():
        raise ContractError(f"{what}: labels must be float 0/1 vectors, the first is {label.tolist()} ({label.dtype})")
    return item
