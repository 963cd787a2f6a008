"""Slide predictions as GeoJSON that QuPath imports over the slide (File > Import objects, or drag and drop).

One ``Feature`` per predicted patch (RFC 7946 GeoJSON, with QuPath's conventions for the properties):

- ``geometry``: a closed ``Polygon``, the patch's square in **level-0 pixel coordinates** of the slide (QuPath's
  image coordinates: x to the right, y down), its ring listed counter-clockwise in (x, y) numbers, first corner
  repeated last;
- ``properties.objectType``: ``"tile"`` (QuPath shows tiles as detections that measure a region);
- ``properties.classification``: ``{"name"}``, the predicted classes joined with ``": "`` (QuPath's derived-class
  separator, so "tumour: stroma" is both), absent when no class reaches its threshold;
- ``properties.measurements``: ``{"p(<class>)": probability}`` per class, and ``tissue fraction``: what QuPath lists
  in its measurement table and colours by (Measure > Show measurement maps);
- ``properties.predicted``: the predicted class names as a list (ignored by QuPath, convenient elsewhere).

Pure functions: :func:`patch_features` builds the dict, :func:`geojson_text` serialises it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

CLASS_SEPARATOR = ": "
"""QuPath joins the parts of a derived class name with this."""


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
            properties["classification"] = {"name": CLASS_SEPARATOR.join(names)}
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
