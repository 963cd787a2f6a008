"""Slide predictions as GeoJSON that QuPath imports over the slide (File > Import objects, or drag and drop).

One ``Feature`` per predicted patch (RFC 7946 GeoJSON, with QuPath's conventions for the properties):

- ``geometry``: a closed ``Polygon``, the patch's square in **level-0 pixel coordinates** of the slide (QuPath's
  image coordinates: x to the right, y down), its ring listed counter-clockwise in (x, y) numbers, first corner
  repeated last;
- ``properties.objectType``: ``"tile"`` (QuPath shows tiles as detections that measure a region);
- ``properties.classification``: ``{"name", "color"}``, **one** class per tile: the most probable of the classes
  that reach their thresholds (QuPath reads ``A: B`` as a derived class, B under A, so several predicted classes are
  never joined into one name); absent when no class reaches its threshold. ``color`` is ``[r, g, b]``, the class's
  colour in :data:`CLASS_COLOURS` order (QuPath colours the tile with it);
- ``properties.measurements``: ``{"p(<class>)": probability}`` for every class, and ``tissue fraction``: what QuPath
  lists in its measurement table and colours by (Measure > Show measurement maps);
- ``properties.predicted``: every predicted class name as a list (ignored by QuPath, convenient elsewhere).

Pure functions: :func:`patch_features` builds the dict, :func:`geojson_text` serialises it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

CLASS_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
"""Class k's tile colour is entry ``k % 10`` (matplotlib's tab10, distinct for up to ten classes)."""


def square_ring(x: float, y: float, side: float) -> list[list[float]]:
    """The closed, counter-clockwise ring of the square with top-left corner (x, y) and the given side."""
    x1, y1 = x + side, y + side
    return [[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]


def patch_features(
    ids: Sequence[dict[str, Any]],
    probs: np.ndarray,
    predicted: np.ndarray,
    class_names: Sequence[str],
    extent: float,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the patches.

    Args:
        ids: per patch ``{"x", "y", ...}``: top-left corner in level-0 pixels (and optionally ``tissue_fraction``).
        probs: (N, C) probabilities.
        predicted: (N, C) booleans (probability >= threshold).
        class_names: C names.
        extent: patch side in level-0 pixels (the region read: size times the level's downsample).
    """
    features = []
    for row, p, on in zip(ids, np.asarray(probs, dtype=np.float64), np.asarray(predicted, dtype=bool), strict=True):
        names = [c for c, yes in zip(class_names, on, strict=True) if yes]
        measurements = {f"p({c})": float(v) for c, v in zip(class_names, p, strict=True)}
        if "tissue_fraction" in row:
            measurements["tissue fraction"] = float(row["tissue_fraction"])
        properties: dict[str, Any] = {"objectType": "tile", "measurements": measurements, "predicted": names}
        if names:
            top = max((k for k, yes in enumerate(on) if yes), key=lambda k: p[k])
            properties["classification"] = {"name": class_names[top], "color": list(CLASS_COLOURS[top % 10])}
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [square_ring(float(row["x"]), float(row["y"]), extent)]},
                "properties": properties,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def geojson_text(collection: dict[str, Any]) -> str:
    """Compact JSON text of a FeatureCollection (one feature per line, so large files stay diffable)."""
    features = ",\n".join(json.dumps(f, separators=(",", ":")) for f in collection["features"])
    return '{"type":"FeatureCollection","features":[\n' + features + "\n]}\n"
