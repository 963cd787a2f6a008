"""probmcl-med: ProbMCL (probabilistic multi-label contrastive learning) for medical images, on MONAI.

The plugin API is the registries and the mixture type::

    from probmcl_med import SIMILARITIES, OVERLAPS, ENCODERS, DATASETS, LIKELIHOODS, GaussianMixture
"""

from __future__ import annotations

import os

# albumentations checks PyPI for updates on import; timm tries the hub for pretrained weights. Neither belongs in a
# run on a hospital workstation without internet: both are off unless the user turned them on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from probmcl_med import registry as _registry
from probmcl_med.core import likelihoods as _likelihoods  # noqa: F401 (registers the built-in likelihoods)
from probmcl_med.core import overlaps as _overlaps  # noqa: F401 (registers the built-in overlaps)
from probmcl_med.core import similarities as _similarities  # noqa: F401 (registers the built-in similarities)
from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.registry import LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry

__version__ = "0.1.0"


def __getattr__(name: str) -> Registry:
    """``ENCODERS`` and ``DATASETS`` with their built-ins, imported on first use (timm and the dataset readers are
    slow to import, and ``probmcl-med --help`` needs neither)."""
    if name == "ENCODERS":
        from probmcl_med.models import encoders as _encoders  # noqa: F401 (registers the built-in encoders)

        return _registry.ENCODERS
    if name == "DATASETS":
        from probmcl_med.data import datasets as _datasets  # noqa: F401 (registers the built-in datasets)

        return _registry.DATASETS
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
