"""The data layer: datasets of ``{"image", "label"}`` dicts, MONAI transforms, slide reading, data checks.

Public names, imported on first use (every config validation imports this package, through the validators' import
of ``probmcl_med.data.datasets``; the transforms would add MONAI, whose import measured 2.3x torch's with
``python -X importtime`` on the 2-core dev machine)::

    from probmcl_med.data import (
        MultiLabelDataset, collate_skip_none, make_loader, seed_worker,
        build_train_transform, build_eval_transform, TwoViews,
        IMAGENET_MEAN, IMAGENET_STD, ADP_MEAN, ADP_STD, Normalization, resolve_normalization, compute_mean_std,
        SlideGrid, tile_slide, check_dataset,
    )

Datasets are built through the registry: ``DATASETS.get("adp")(root, split="train", level="L3")``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MultiLabelDataset": "probmcl_med.data.base",
    "collate_skip_none": "probmcl_med.data.base",
    "make_loader": "probmcl_med.data.base",
    "seed_worker": "probmcl_med.data.base",
    "seeded_split": "probmcl_med.data.base",
    "SPLITS": "probmcl_med.data.base",
    "build_train_transform": "probmcl_med.data.transforms",
    "build_eval_transform": "probmcl_med.data.transforms",
    "TwoViews": "probmcl_med.data.transforms",
    "ReadImaged": "probmcl_med.data.transforms",
    "IMAGENET_MEAN": "probmcl_med.data.normalization",
    "IMAGENET_STD": "probmcl_med.data.normalization",
    "ADP_MEAN": "probmcl_med.data.normalization",
    "ADP_STD": "probmcl_med.data.normalization",
    "Normalization": "probmcl_med.data.normalization",
    "resolve_normalization": "probmcl_med.data.normalization",
    "compute_mean_std": "probmcl_med.data.normalization",
    "read_image": "probmcl_med.data.imageio",
    "read_pixels": "probmcl_med.data.imageio",
    "read_slide_region": "probmcl_med.data.imageio",
    "SlideGrid": "probmcl_med.data.tiling",
    "tile_slide": "probmcl_med.data.tiling",
    "check_dataset": "probmcl_med.data.checks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probmcl_med.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
