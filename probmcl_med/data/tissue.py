"""The tissue mask of a slide thumbnail: coloured pixels (H&E), less pen ink and dark artefacts, less specks.

A pixel is **tissue** when all of these hold (each a named, tested rule; the field's tools, e.g. histolab's
``TissueMask`` and its pen filters, do the same kind of thing with RGB thresholds):

1. *coloured*: HSV saturation above ``max(Otsu threshold, MIN_SATURATION)`` (:func:`otsu_threshold` of the pixels
   that no ink rule below claims, so marker strokes do not move the threshold; H&E is pink and
   purple, glass is white or grey; pale fat and white glass have the same brightness, not the same saturation);
2. *not green or blue ink*: no H&E dye is green or cyan (hue 60-185 deg, the haematoxylin-eosin gamut never goes
   there), and blue marker is more saturated and bluer than haematoxylin (hue 185-250 deg with saturation above
   :data:`BLUE_INK_SATURATION`; dense nuclei are purple, hue above 250, or paler);
3. *not black ink or debris*: darker than :data:`BLACK_VALUE` (black marker over tissue, whatever its tint; the
   price: the darkest 1.6 % of the CMU crop's tissue pixels, dense nuclei, which changes no patch's tissue fraction
   by more than a few percent), or dark (:data:`DARK_VALUE`) *and* grey (saturation below
   :data:`DARK_GREY_SATURATION`: black marker on glass is neutral, dense haematoxylin is purple, its 1st percentile
   of saturation 0.35 on the CMU crop);

then only coloured pixels within 2 pixels of a solid core (what survives an opening with a 3 x 3 square) are kept,
so speckle noise goes while thin strands and edges of tissue stay, and connected regions smaller than
:data:`MIN_REGION_FRACTION` of the thumbnail are dropped. Red ink is not removed: it is too close to eosin to be
told apart by colour alone (restrict such a slide with ``predict --mask``).

:func:`tissue_mask` returns a :class:`TissueMask` with the statistics that ``predict`` records in meta.json, so a
slide with no tissue is a result that says why (:attr:`TissueMask.found`), not an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

MIN_SATURATION = 0.05
"""Lower bound of the saturation threshold: on a slide that is all background Otsu would split the noise."""

BLUE_INK_SATURATION = 0.45
"""Blue-hued pixels (185-250 deg) above this saturation are blue marker, not haematoxylin."""

BLACK_VALUE = 56 / 255
"""HSV value (max channel, 0-1) below which a pixel is black ink or debris, whatever its colour."""

DARK_VALUE = 0.4
"""Dark pixels (value below this) that are also grey (:data:`DARK_GREY_SATURATION`) are black ink."""

DARK_GREY_SATURATION = 0.35

MIN_REGION_FRACTION = 2e-4
"""Connected tissue regions smaller than this fraction of the thumbnail's pixels are specks and dropped."""


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


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees, 0-360), saturation and value (0-1) of an (H, W, 3) uint8 image, each (H, W) float32.

    Saturation is ``(max - min) / max`` (0 where max is 0); hue is the standard hexcone angle (0 for greys).
    """
    rgb = rgb.astype(np.float32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    span = hi - lo
    sat = np.divide(span, hi, out=np.zeros_like(hi), where=hi > 0)
    safe = np.where(span > 0, span, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(hi == r, (60.0 * (g - b) / safe) % 360.0, np.where(hi == g, 60.0 * (b - r) / safe + 120.0,
                   60.0 * (r - g) / safe + 240.0))  # fmt: skip
    return np.where(span > 0, hue, 0.0).astype(np.float32), sat, hi / 255.0


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an (H, W, 3) uint8 image, in [0, 1] (0 where max is 0)."""
    return hsv(rgb)[1]


INK_RULES = ("green_ink", "blue_ink", "black_ink")

BAND_ROWS = 128
"""Rows of the thumbnail converted to HSV at once (the float temporaries stay a few MB whatever its size)."""


def ink_masks(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """(H, W) bool masks of the green, blue and black ink (and dark debris) rules of the module docstring."""
    return _pixel_rules(rgb)[1]


def _pixel_rules(rgb: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(H, W) float32 saturation and the ink masks, computed in bands of :data:`BAND_ROWS` rows."""
    h, w = rgb.shape[:2]
    sat_out = np.empty((h, w), np.float32)
    inks = {name: np.empty((h, w), bool) for name in INK_RULES}
    for r0 in range(0, h, BAND_ROWS):
        hue, sat, value = hsv(rgb[r0 : r0 + BAND_ROWS])
        band = slice(r0, r0 + BAND_ROWS)
        sat_out[band] = sat
        coloured = sat > 0.15  # a hue is meaningful only on a coloured pixel
        inks["green_ink"][band] = coloured & (hue >= 60.0) & (hue < 185.0)
        inks["blue_ink"][band] = (sat > BLUE_INK_SATURATION) & (hue >= 185.0) & (hue < 250.0)
        inks["black_ink"][band] = (value < BLACK_VALUE) | ((value < DARK_VALUE) & (sat < DARK_GREY_SATURATION))
    return sat_out, inks


@dataclass
class TissueMask:
    """A thumbnail's tissue mask and how it was made.

    Attributes:
        mask: (h, w) bool, True on tissue.
        threshold: the saturation threshold used.
        coloured: pixels above the threshold, before the ink rules and the clean-up.
        excluded: pixels removed by each ink rule (``green_ink``, ``blue_ink``, ``black_ink``).
        saturation_percentiles: the thumbnail's saturation at the 50th, 90th and 99th percentiles.
        restricted: pixels outside a user's ``--mask`` region (0 without one).
    """

    mask: np.ndarray
    threshold: float
    coloured: int
    excluded: dict[str, int]
    saturation_percentiles: tuple[float, float, float]
    restricted: int = 0

    @property
    def found(self) -> bool:
        """True when any tissue is left."""
        return bool(self.mask.any())

    def stats(self) -> dict[str, Any]:
        """What meta.json records: sizes, counts of each rule, the threshold, saturation percentiles."""
        h, w = self.mask.shape
        return {
            "thumbnail": [int(w), int(h)],
            "tissue_pixels": int(self.mask.sum()),
            "tissue_fraction": round(float(self.mask.mean()), 6),
            "saturation_threshold": round(float(self.threshold), 4),
            "saturation_p50_p90_p99": [round(float(v), 4) for v in self.saturation_percentiles],
            "coloured_pixels": int(self.coloured),
            "excluded_pixels": {k: int(v) for k, v in self.excluded.items()},
            "outside_user_mask": int(self.restricted),
        }


def tissue_mask(rgb: np.ndarray, region: np.ndarray | None = None) -> TissueMask:
    """The tissue mask of an (h, w, 3) uint8 thumbnail (rules in the module docstring).

    Args:
        rgb: the thumbnail.
        region: optional (h, w) bool: only tissue inside it is kept (``predict --mask``).
    """
    sat, inks = _pixel_rules(rgb)
    clean = ~np.logical_or.reduce(list(inks.values()))
    # the threshold is Otsu's of the pixels that are not ink: strokes of saturated marker do not move it
    threshold = max(otsu_threshold(sat[clean] if clean.any() else sat), MIN_SATURATION)
    coloured = sat > threshold
    mask = coloured.copy()
    excluded = {}
    for name, ink in inks.items():
        excluded[name] = int((mask & ink).sum())
        mask &= ~ink
    square = np.ones((3, 3), bool)
    core = ndimage.binary_opening(mask, structure=square)  # solid tissue: noise specks have no 3 x 3 core
    mask &= ndimage.binary_dilation(core, structure=square, iterations=2)  # thin strands and edges by a core stay
    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= max(1, MIN_REGION_FRACTION * mask.size)
        keep[0] = False
        mask = keep[labels]
    restricted = 0
    if region is not None:
        restricted = int((mask & ~region).sum())
        mask &= region
    percentiles = tuple(float(v) for v in np.percentile(sat, [50, 90, 99]))
    return TissueMask(mask, threshold, int(coloured.sum()), excluded, percentiles, restricted)  # type: ignore[arg-type]
