"""probmcl-med: ProbMCL (probabilistic multi-label contrastive learning) for medical images, on MONAI.

The plugin API is the registries and the mixture type::

    from probmcl_med import SIMILARITIES, OVERLAPS, ENCODERS, DATASETS, LIKELIHOODS, GaussianMixture
"""

from __future__ import annotations

import os

# albumentations checks PyPI for updates on import; timm tries the hub for pretrained weights. Neither belongs in a
# run on a hospital workstation without internet: both are off unless the user turned them on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from typing import TYPE_CHECKING, Any

from probmcl_med.registry import DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry

if TYPE_CHECKING:
    from probmcl_med.core.mixture import GaussianMixture

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``GaussianMixture`` is imported on first use (PEP 562): it needs torch, and importing the package for the
    command line (``--help``, a refused command) must not wait for torch (``benchmarks/bench_refusal.py``)."""
    if name == "GaussianMixture":
        from probmcl_med.core.mixture import GaussianMixture

        return GaussianMixture
    raise AttributeError(f"module 'probmcl_med' has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "ENCODERS",
    "LIKELIHOODS",
    "OVERLAPS",
    "SIMILARITIES",
    "GaussianMixture",
    "Registry",
    "__version__",
]
