"""QuPath GeoJSON checked with the geojson and shapely libraries (RFC 7946 validity, geometry, properties)."""

from __future__ import annotations

import geojson
import numpy as np
import pytest
from shapely.geometry import Point, shape

from probmcl_med.inference.geojson import geojson_text, patch_features


def _collection():
    ids = [{"x": 0, "y": 0, "tissue_fraction": 0.9}, {"x": 448, "y": 224}, {"x": 224, "y": 672}]
    probs = np.array([[0.9, 0.2, 0.7], [0.1, 0.3, 0.2], [0.5, 0.5, 0.5]])
    predicted = probs >= np.array([0.5, 0.4, 0.6])
    return ids, probs, predicted, patch_features(ids, probs, predicted, ["tumour", "stroma", "necrosis"], 224.0)


def test_valid_geojson_with_one_square_per_patch():
    ids, _, _, collection = _collection()
    parsed = geojson.loads(geojson_text(collection))
    assert isinstance(parsed, geojson.FeatureCollection) and parsed.is_valid, parsed.errors()
    assert len(parsed["features"]) == 3
    for row, feature in zip(ids, parsed["features"], strict=True):
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw  # RFC 7946 right-hand rule
        assert polygon.area == pytest.approx(224.0**2)
        assert polygon.bounds == (row["x"], row["y"], row["x"] + 224, row["y"] + 224)  # level-0 pixels
        assert polygon.contains(Point(row["x"] + 112, row["y"] + 112))
        ring = feature["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5
    shapes = [shape(f["geometry"]) for f in parsed["features"]]
    assert all(a.intersection(b).area == 0 for i, a in enumerate(shapes) for b in shapes[i + 1 :])


def test_qupath_properties_hold_probabilities_and_classes():
    _, probs, _, collection = _collection()
    props = [f["properties"] for f in geojson.loads(geojson_text(collection))["features"]]
    assert all(p["objectType"] == "tile" for p in props)
    # one class per tile, the most probable called one (QuPath reads "a: b" as b derived from a, not as both)
    assert props[0]["classification"] == {"name": "tumour", "color": [31, 119, 180]}
    assert props[0]["predicted"] == ["tumour", "necrosis"]
    assert "classification" not in props[1] and props[1]["predicted"] == []
    assert props[2]["classification"] == {"name": "tumour", "color": [31, 119, 180]}  # tie 0.5/0.5: the first
    assert props[2]["predicted"] == ["tumour", "stroma"]
    for p, row in zip(props, probs, strict=True):
        assert [p["measurements"][f"p({c})"] for c in ("tumour", "stroma", "necrosis")] == pytest.approx(row)
    assert props[0]["measurements"]["tissue fraction"] == 0.9
