"""probmcl-med: ProbMCL (probabilistic multi-label contrastive learning) for medical images, on MONAI.

The plugin API is the registries and the mixture type::

    from probmcl_med import SIMILARITIES, OVERLAPS, ENCODERS, DATASETS, LIKELIHOODS, GaussianMixture
"""

from __future__ import annotations

import os

# albumentations checks PyPI for updates on import; timm tries the hub for pretrained weights. Neither belongs in a
# run on a hospital workstation without internet: both are off unless the user turned them on.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from probmcl_med.core.mixture import GaussianMixture
from probmcl_med.registry import DATASETS, ENCODERS, LIKELIHOODS, OVERLAPS, SIMILARITIES, Registry

__version__ = "0.1.0"

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
