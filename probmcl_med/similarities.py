"""The mixture similarities at their public path ``probmcl_med.similarities``; the code is in
:mod:`probmcl_med.core.similarities` (the math core)."""

from __future__ import annotations

from probmcl_med.core.similarities import (
    DEFAULT_TILE_ELEMENTS,
    DEFAULT_TILE_ELEMENTS_CUDA,
    bhattacharyya_similarity,
    correlation_similarity,
    default_block_size,
    log_correlation_similarity,
    log_variance_ratio,
)

__all__ = [
    "DEFAULT_TILE_ELEMENTS",
    "DEFAULT_TILE_ELEMENTS_CUDA",
    "bhattacharyya_similarity",
    "correlation_similarity",
    "default_block_size",
    "log_correlation_similarity",
    "log_variance_ratio",
]
