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

from probmcl_med import registry as _registry
from probmcl_med.registry import Registry

if TYPE_CHECKING:
    from probmcl_med.core.mixture import GaussianMixture
    from probmcl_med.registry import DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The registries with their built-ins, and ``GaussianMixture``, imported on first use (PEP 562): the modules
    that register the built-ins import torch (timm, the dataset readers), and importing the package for the command
    line (``--help``, a refused command) must not wait for them (``benchmarks/bench_refusal.py``)."""
    if name == "GaussianMixture":
        from probmcl_med.core.mixture import GaussianMixture

        return GaussianMixture
    if name == "ENCODERS":
        from probmcl_med.models import encoders as _encoders  # noqa: F401 (registers the built-in encoders)
    elif name == "DATASETS":
        from probmcl_med.data import datasets as _datasets  # noqa: F401 (registers the built-in datasets)
    elif name == "LIKELIHOODS":
        from probmcl_med.core import likelihoods as _likelihoods  # noqa: F401 (registers the built-in likelihoods)
    elif name == "OVERLAPS":
        from probmcl_med.core import overlaps as _overlaps  # noqa: F401 (registers the built-in overlaps)
    elif name == "SIMILARITIES":
        from probmcl_med.core import similarities as _similarities  # noqa: F401 (registers the built-ins)
    else:
        raise AttributeError(f"module 'probmcl_med' has no attribute {name!r}")
    return getattr(_registry, name)


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
