"""The tissue mask of a slide thumbnail: Otsu on the saturation (H&E is coloured, glass is white or grey)."""

from __future__ import annotations

import numpy as np

MIN_SATURATION = 0.05
"""Lower bound of the tissue threshold: on a slide that is all background Otsu would split the noise."""


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]: the cut maximising the between-class variance (Otsu 1979).

    Computed from a ``bins``-bin histogram: for each cut t, w0(t) mu0(t) and w1(t) mu1(t) from cumulative sums, and
    sigma_b^2(t) = w0 w1 (mu0 - mu1)^2. Returns the upper edge of the best bin.
    """
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an (H, W, 3) uint8 image, in [0, 1] (0 where max is 0)."""
    rgb = rgb.astype(np.float32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def tissue_mask(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Tissue (True) vs background of a thumbnail: saturation above max(Otsu threshold, MIN_SATURATION).

    H&E-stained tissue is coloured (pink/purple) and glass is white or grey, so saturation separates them better than
    brightness does (pale fat and white glass have the same brightness).
    """
    sat = saturation(rgb)
    threshold = max(otsu_threshold(sat), MIN_SATURATION)
    return sat > threshold, threshold
