"""The mixture similarities at their public path ``probmcl_med.similarities``; the code is in
:mod:`probmcl_med.core.similarities` (the math core).

The correlation similarity's fused Triton kernel lives in :mod:`probmcl_med.core.triton_correlation`; it is not
re-exported here because importing it imports Triton and builds the kernels. Select it with
``correlation_similarity(a, b, backend="triton")`` (:data:`BACKENDS`, :func:`resolve_backend`), which imports it lazily.
"""

from __future__ import annotations

from probmcl_med.core.similarities import (
    BACKENDS,
    DEFAULT_TILE_ELEMENTS,
    DEFAULT_TILE_ELEMENTS_CUDA,
    bhattacharyya_similarity,
    correlation_similarity,
    default_block_size,
    log_correlation_similarity,
    log_variance_ratio,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_TILE_ELEMENTS",
    "DEFAULT_TILE_ELEMENTS_CUDA",
    "bhattacharyya_similarity",
    "correlation_similarity",
    "default_block_size",
    "log_correlation_similarity",
    "log_variance_ratio",
    "resolve_backend",
]
