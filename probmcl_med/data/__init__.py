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

from probmcl_med.lazy import lazy_getattr

_EXPORTS = {
    "probmcl_med.data.base": (
        "MultiLabelDataset",
        "collate_skip_none",
        "make_loader",
        "seed_worker",
        "seeded_split",
        "SPLITS",
    ),
    "probmcl_med.data.transforms": ("build_train_transform", "build_eval_transform", "TwoViews", "ReadImaged"),
    "probmcl_med.data.normalization": (
        "IMAGENET_MEAN",
        "IMAGENET_STD",
        "ADP_MEAN",
        "ADP_STD",
        "Normalization",
        "resolve_normalization",
        "compute_mean_std",
    ),
    "probmcl_med.data.imageio": ("read_image", "read_pixels", "read_slide_region"),
    "probmcl_med.data.tiling": ("SlideGrid", "tile_slide"),
    "probmcl_med.data.checks": ("check_dataset",),
}
"""Each public name's module: imported on first use of one of its names."""

__all__ = sorted(name for names in _EXPORTS.values() for name in names)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
