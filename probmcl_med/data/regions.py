"""Regions drawn on a slide: GeoJSON features (QuPath's export) read strictly, and rasterised onto a thumbnail grid.

QuPath exports annotations (File > Export objects as GeoJSON) as a ``FeatureCollection`` (or, in older versions, a
bare list of ``Feature`` objects) whose geometries are in **level-0 pixel coordinates** of the image (x right, y
down). Each feature's ``properties`` may hold ``objectType`` (``annotation``, ``detection``, ``tile``, ...),
``classification`` (``{"name": ..., "color": [r, g, b]}``; older exports give ``colorRGB`` as a packed integer) and
``isLocked``/``measurements``. :func:`read_features` accepts a ``FeatureCollection``, a ``Feature``, a list of
features, or a bare ``Polygon``/``MultiPolygon``/``GeometryCollection``, and keeps the polygonal geometries; a
polygon is a list of rings, the first the outline and the others holes (RFC 7946).

:func:`rasterize` draws polygons (holes cut out) onto a boolean grid with PIL; :func:`region_mask` reads a
``predict --mask`` file, either such GeoJSON or a binary image (non-zero = inside) of the slide's aspect ratio.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from probmcl_med.errors import DataError
from probmcl_med.fileio import read_json

Ring = list[tuple[float, float]]
Polygon = list[Ring]
"""A polygon: its outline ring, then its holes; each ring a list of (x, y) level-0 pixel coordinates."""


@dataclass
class Region:
    """One polygonal feature of a GeoJSON file.

    Attributes:
        polygons: the feature's polygons (a MultiPolygon has several).
        properties: the feature's ``properties`` (QuPath: ``classification``, ``objectType``, ...).
        index: position of the feature in the file (for messages).
    """

    polygons: list[Polygon]
    properties: dict[str, Any] = field(default_factory=dict)
    index: int = 0


def _polygons(geometry: Any, where: str) -> list[Polygon]:
    if not isinstance(geometry, dict) or "type" not in geometry:
        raise DataError(f"{where}: a geometry must be an object with a 'type'")
    kind = geometry["type"]
    if kind == "GeometryCollection":
        return [p for g in geometry.get("geometries", []) for p in _polygons(g, where)]
    if kind not in ("Polygon", "MultiPolygon"):
        return []  # points and lines (QuPath's point annotations) cover no area
    coords = geometry.get("coordinates")
    raw = [coords] if kind == "Polygon" else coords
    try:
        polygons = [[[(float(x), float(y)) for x, y, *_ in ring] for ring in polygon] for polygon in raw]
    except (TypeError, ValueError):
        raise DataError(f"{where}: {kind} coordinates must be lists of [x, y] numbers") from None
    for polygon in polygons:
        if not polygon or any(len(ring) < 3 for ring in polygon):
            raise DataError(f"{where}: a polygon ring needs at least 3 points")
    return polygons


def read_features(path: str | Path) -> list[Region]:
    """The polygonal features of a GeoJSON file (layouts in the module docstring).

    Raises:
        DataError: missing file, invalid JSON, or not GeoJSON (one line naming the file and the feature).
    """
    path = Path(path)
    data = read_json(path, f"GeoJSON {path} does not exist")
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") in ("Polygon", "MultiPolygon", "GeometryCollection"):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise DataError(
            f"{path}: not GeoJSON (expected a FeatureCollection, a Feature, a list of features or a polygon)"
        )
    regions = []
    for i, feature in enumerate(features):
        where = f"{path}, feature {i}"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise DataError(f"{where}: not a GeoJSON Feature")
        polygons = _polygons(feature.get("geometry"), where)
        if polygons:
            regions.append(Region(polygons, dict(feature.get("properties") or {}), i))
    return regions


def rasterize(polygons: Iterable[Polygon], shape: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """(h, w) bool grid: True inside any polygon (holes excluded); pixel (r, c) covers level-0 [c*sx, (c+1)*sx).

    Args:
        polygons: polygons in level-0 pixel coordinates.
        shape: (h, w) of the grid.
        scale: (sx, sy) level-0 pixels per grid pixel.

    PIL fills a polygon's pixels whose centres lie inside it (and its outline), per polygon: each outline is filled,
    then its holes cleared, so a hole of one polygon does not cut another polygon drawn over it.
    """
    h, w = shape
    sx, sy = scale
    out = np.zeros((h, w), dtype=bool)
    for polygon in polygons:
        layer = Image.new("1", (w, h), 0)
        draw = ImageDraw.Draw(layer)
        for k, ring in enumerate(polygon):
            points = [(x / sx - 0.5, y / sy - 0.5) for x, y in ring]  # grid pixel centres at (c + 0.5) * sx
            draw.polygon(points, fill=0 if k else 1)
        out |= np.asarray(layer, dtype=bool)
    return out


GEOJSON_SUFFIXES = (".geojson", ".json")


def region_mask(path: str | Path, shape: tuple[int, int], dimensions: Sequence[int]) -> np.ndarray:
    """A ``--mask`` file as an (h, w) bool grid over a slide of level-0 ``dimensions`` (W, H).

    GeoJSON (``.geojson``/``.json``): its polygons in level-0 pixels. Anything else: an image read with PIL, any
    size with the slide's aspect ratio (within 2 %), non-zero pixels inside, resized to the grid (nearest).

    Raises:
        DataError: unreadable file, no polygon, an image of another aspect ratio, or a mask with nothing inside.
    """
    path = Path(path)
    h, w = shape
    width, height = dimensions
    if path.suffix.lower() in GEOJSON_SUFFIXES:
        regions = read_features(path)
        if not regions:
            raise DataError(f"--mask {path}: no Polygon or MultiPolygon in it; draw the region as an area")
        grid = rasterize((p for r in regions for p in r.polygons), shape, (width / w, height / h))
    else:
        try:
            with Image.open(path) as image:
                grey = image.convert("L")
        except FileNotFoundError:
            raise DataError(f"--mask {path} does not exist") from None
        except Exception as exc:  # PIL's own errors: not an image
            raise DataError(f"--mask {path}: not an image or GeoJSON ({type(exc).__name__})") from None
        ratio, slide_ratio = grey.width / grey.height, width / height
        if abs(ratio / slide_ratio - 1) > 0.02:
            raise DataError(
                f"--mask {path} is {grey.width}x{grey.height}, not the slide's aspect ratio ({width}x{height}); "
                "give a mask image of the whole slide"
            )
        grid = np.asarray(grey.resize((w, h), Image.Resampling.NEAREST)) > 0
    if not grid.any():
        raise DataError(f"--mask {path} covers nothing of the slide")
    return grid
