"""Every registered name meets its registry's contract, the shipped plugins included (timm's habit: whatever is
registered gets tested, so a new built-in or plugin is covered the day it is added).

- similarities: ``(len(a), len(b))``, finite, in [0, 1], 1 on the diagonal for identical mixtures, differentiable;
- overlaps: ``(B, M)``, finite, in [0, 1] (empty label sets included);
- likelihoods: a finite scalar, differentiable in the features and the mixture;
- encoders: ``(B, num_features)`` finite float32 features (raw: the models that need unit-norm rows normalise them)
  and a (mean, std) normalisation; the large backbones (tens of millions of parameters) run with the slow tests, the
  same wrapper on the small ones in every run;
- datasets: items ``{"image", "label"}`` with a (C,) 0/1 label and readable pixels.

The plugin files in ``plugins/`` and ``benchmarks/evidence/plugins/`` are imported at collection under names of
their own, their entries snapshotted, and unregistered again, so the other test modules see the built-ins only.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_data_adp_coco import adp_root, coco_root  # noqa: F401 - fixtures used by the dataset builders
from test_data_slides import _manifest, pyramid  # noqa: F401 - fixture and helper of the slides builder
from test_inference import make_csv_dataset

from probmcl_med import DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES, GaussianMixture, Registry, testing
from probmcl_med.data.transforms import build_eval_transform
from probmcl_med.plugins import is_plugin_file

REPO = Path(__file__).resolve().parents[1]
PLUGIN_FILES = sorted(
    p
    for p in [*(REPO / "plugins").glob("*.py"), *(REPO / "benchmarks" / "evidence" / "plugins").glob("*.py")]
    if is_plugin_file(p)
)
REGISTRIES: dict[str, Registry] = {
    "similarities": SIMILARITIES,
    "overlaps": OVERLAPS,
    "likelihoods": LIKELIHOODS,
    "encoders": ENCODERS,
    "datasets": DATASETS,
}


def _entries_with_plugins() -> dict[str, list[tuple[str, Any]]]:
    before = {key: set(registry.names()) for key, registry in REGISTRIES.items()}
    for path in PLUGIN_FILES:
        name = f"_registry_contract_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        del sys.modules[name]
    entries = {key: [(e.name, e.obj) for e in registry.entries()] for key, registry in REGISTRIES.items()}
    for key, registry in REGISTRIES.items():
        for name in set(registry.names()) - before[key]:
            registry.unregister(name)
    return entries


ENTRIES = _entries_with_plugins()


def _ids(key: str) -> list[str]:
    return [name for name, _ in ENTRIES[key]]


def test_the_shipped_plugins_are_among_the_tested_names() -> None:
    assert "moment_kl" in _ids("similarities") and "supcon_features" in _ids("likelihoods")
    assert {"correlation", "bhattacharyya"} <= set(_ids("similarities")) and "test_resnet" in _ids("encoders")


def _mixture(batch: int, components: int, dim: int, seed: int) -> tuple[GaussianMixture, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, components, generator=g).requires_grad_(True)
    means = (0.3 * torch.randn(batch, components, generator=g)).requires_grad_(True)
    variances = (1.0 + 2.0 * torch.rand(batch, components, generator=g)).requires_grad_(True)
    return GaussianMixture(torch.softmax(logits, 1), means, variances, dim), [logits, means, variances]


@pytest.mark.parametrize(("name", "similarity"), ENTRIES["similarities"], ids=_ids("similarities"))
def test_similarity_contract(name: str, similarity: Any) -> None:
    testing.check_similarity(similarity, name=name)  # what training runs before it starts
    a, params_a = _mixture(5, 4, 16, seed=0)
    b, params_b = _mixture(3, 4, 16, seed=1)
    s = similarity(a, b)
    assert s.shape == (5, 3) and torch.isfinite(s).all()
    assert ((s >= 0) & (s <= 1 + 1e-6)).all(), (s.min().item(), s.max().item())
    s.sum().backward()
    for p in [*params_a, *params_b]:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert any(p.grad.abs().sum() > 0 for p in params_a)
    same = similarity(a, a)
    torch.testing.assert_close(same.diagonal(), torch.ones(5, dtype=same.dtype), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "overlap"), ENTRIES["overlaps"], ids=_ids("overlaps"))
def test_overlap_contract(name: str, overlap: Any) -> None:
    testing.check_overlap(overlap, name=name)
    g = torch.Generator().manual_seed(2)
    ya = (torch.rand(6, 5, generator=g) < 0.4).float()
    yb = (torch.rand(4, 5, generator=g) < 0.4).float()
    ya[0] = 0.0  # an image without labels
    yb[1] = ya[2]
    d = overlap(ya, yb)
    assert d.shape == (6, 4) and torch.isfinite(d).all()
    assert ((d >= 0) & (d <= 1 + 1e-6)).all(), (d.min().item(), d.max().item())


@pytest.mark.parametrize(("name", "likelihood"), ENTRIES["likelihoods"], ids=_ids("likelihoods"))
def test_likelihood_contract(name: str, likelihood: Any) -> None:
    testing.check_likelihood(likelihood, name=name)
    mixture, params = _mixture(8, 3, 16, seed=3)
    g = torch.Generator().manual_seed(4)
    z = torch.nn.functional.normalize(torch.randn(8, 16, generator=g), dim=1).requires_grad_(True)
    labels = (torch.rand(8, 3, generator=g) < 0.5).float()
    labels[0] = 0.0
    labels[1:3] = labels[3]  # samples sharing labels (contrastive readings need positives)
    value = likelihood(mixture, z, labels)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    grads = [t.grad for t in (z, *params)]
    assert all(g is None or torch.isfinite(g).all() for g in grads) and any(g is not None for g in grads)


LARGE_ENCODERS = {"tresnet_m", "tresnet_l", "resnet50", "tv_resnet50"}
"""Built in, 23 to 56 M parameters: seconds each to build on a CPU, checked with the slow tests."""


@pytest.mark.parametrize(
    ("name", "factory"),
    [pytest.param(n, f, marks=[pytest.mark.slow] if n in LARGE_ENCODERS else []) for n, f in ENTRIES["encoders"]],
    ids=_ids("encoders"),
)
def test_encoder_contract(name: str, factory: Any) -> None:
    from probmcl_med.models.presets import PRESETS

    torch.manual_seed(0)
    size = 64
    if name in PRESETS:  # a foundation model: one block of its architecture (a full ViT-g is minutes and GBs), 224 px
        factory, size = functools.partial(factory, depth=1), 224
    testing.check_encoder(factory, name=name, image_size=size)
    encoder = factory().eval()
    with torch.no_grad():
        h = encoder(torch.randn(2, 3, size, size))
    assert h.shape == (2, encoder.num_features) and h.dtype == torch.float32 and torch.isfinite(h).all()
    mean, std = encoder.normalization
    assert len(mean) == len(std) == 3 and all(s > 0 for s in std)


def _demo(request: pytest.FixtureRequest, tmp: Path) -> tuple[str, dict[str, Any]]:
    return str(tmp / "demo"), {"n_train": 6, "n_valid": 2, "n_test": 2}


def _csv(request: pytest.FixtureRequest, tmp: Path) -> tuple[str, dict[str, Any]]:
    make_csv_dataset(tmp / "csv", n_per_split=3)
    return str(tmp / "csv"), {}


def _adp(request: pytest.FixtureRequest, tmp: Path) -> tuple[str, dict[str, Any]]:
    root, _, _ = request.getfixturevalue("adp_root")
    return str(root), {}


def _coco(request: pytest.FixtureRequest, tmp: Path) -> tuple[str, dict[str, Any]]:
    return str(request.getfixturevalue("coco_root")), {}


def _slides(request: pytest.FixtureRequest, tmp: Path) -> tuple[str, dict[str, Any]]:
    path, _ = request.getfixturevalue("pyramid")
    rows = [(str(path), 64 * i, 32 * i, 0, 32, "stroma|tumour" if i % 2 else "stroma", "train") for i in range(3)]
    return str(_manifest(tmp, path, rows)), {}


DATASET_BUILDERS = {"demo": _demo, "csv": _csv, "adp": _adp, "coco": _coco, "slides": _slides}
"""How to make a tiny instance of each registered dataset (a new dataset needs a builder here)."""


@pytest.mark.parametrize(("name", "factory"), ENTRIES["datasets"], ids=_ids("datasets"))
def test_dataset_contract(name: str, factory: Any, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert name in DATASET_BUILDERS, f"dataset {name!r} is registered but has no tiny builder in this test: add one"
    root, options = DATASET_BUILDERS[name](request, tmp_path)
    dataset = factory(root, "train", **options)
    testing.check_dataset(dataset, name=name)
    assert len(dataset) > 0 and len(dataset.class_names) > 0
    raw = dataset.items[0]
    assert {"image", "label"} <= set(raw)
    label = np.asarray(raw["label"])
    assert label.shape == (len(dataset.class_names),) and set(np.unique(label)) <= {0, 1}
    dataset.transform = build_eval_transform(16, None, None)
    item = dataset[0]
    assert item["image"].shape == (3, 16, 16) and torch.isfinite(item["image"]).all()
    assert item["label"].shape == (len(dataset.class_names),)
