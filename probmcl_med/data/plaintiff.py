"""TIFFs that OpenSlide does not read whole, read region by region through tifffile: large plain images (a region
exported at full resolution, no pyramid) and pyramids stored as SubIFDs or as OME-TIFF (tifffile's ``series[0]
.levels``; OpenSlide sees only their level 0).

OpenSlide reads tiled TIFFs with one page per level; a TIFF export of a region from QuPath, ImageJ or a scanner's
viewer is often a single stripped (untiled) page of 20 000 x 20 000 pixels, which OpenSlide rejects and which PIL
would decode whole (1.2 GB of RGB). :class:`PlainTiff` gives such a file the small part of OpenSlide's interface
that the tiler and the patch reader use (``dimensions``, ``level_count``, ``level_dimensions``,
``level_downsamples``, ``properties``, ``read_region``, ``get_best_level_for_downsample``, ``close``) and decodes, for
each region, only the TIFF segments (strips or tiles) the region touches, through tifffile's per-segment decoder.

Memory bound: segments are decoded one at a time and copied into the region; the most recently used ones are kept
up to :data:`SEGMENT_CACHE_BYTES` (neighbouring patches of a grid row share strips, so each strip is decoded about
once per row of patches, not once per patch). A file whose single segment is larger than
:data:`MAX_SEGMENT_PIXELS` (e.g. the whole image in one strip) is refused with a one-line error saying how to re-save
it. :attr:`PlainTiff.decoded_pixels` counts the pixels decoded so far (tests bound it).

Pyramids: every level of tifffile's first series is a level here (``level_dimensions``, ``level_downsamples`` as
OpenSlide computes them, the mean of the width and height ratios), each decoded segment by segment like level 0.

Resolution: ``openslide.mpp-x``/``-y`` come from the OME-XML ``PhysicalSizeX``/``Y`` (micrometres, or a unit
converted to them; property ``ome.PhysicalSizeX``) or else from the TIFF resolution tags when the unit is centimetre
or inch (as OpenSlide does for generic TIFFs; properties ``tiff.XResolution``, ``tiff.ResolutionUnit``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from probmcl_med.errors import DataError

MAX_SEGMENT_PIXELS = 16 * 1024 * 1024
"""Largest strip or tile decoded at once (pixels): 48 MB of RGB."""

SEGMENT_CACHE_BYTES = 64 * 1024 * 1024
"""Decoded segments kept per open image (least recently used dropped first)."""

_MICRONS_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_UNIT_NAMES = {25400.0: "inch", 10000.0: "centimeter"}
_OME_UNITS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_mpp(xml: str | None) -> tuple[float, float] | None:
    """(x, y) microns per pixel of the first OME ``Pixels`` element, or None when it gives no physical size."""
    import re

    pixels = re.search(r"<Pixels\b[^>]*>", xml or "")
    if pixels is None:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    try:
        sizes = [float(attrs[f"PhysicalSize{a}"]) * _OME_UNITS[attrs.get(f"PhysicalSize{a}Unit", "µm")] for a in "XY"]
    except (KeyError, ValueError):
        return None
    return (sizes[0], sizes[1]) if all(v > 0 for v in sizes) else None


class PlainTiff:
    """An RGB(A)/grey TIFF, one level or a tifffile pyramid, read region by region (see the module docstring).

    Args:
        path: the TIFF file.

    Raises:
        DataError: not a TIFF tifffile reads, not 8-bit, or a segment above :data:`MAX_SEGMENT_PIXELS`.
    """

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path = str(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error, ...
            raise DataError(f"image {self.path} is not a readable TIFF ({type(exc).__name__}: {exc})") from None
        self.decoded_pixels = 0
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], tuple[np.ndarray, int, int]] = OrderedDict()
        self._cached_bytes = 0
        try:
            levels = [level.keyframe for level in self._tif.series[0].levels]
        except Exception:  # a file whose series tifffile cannot assemble: its first page alone
            levels = [self._tif.pages[0]]
        self._pages = levels
        self._page = levels[0]
        for page in levels:
            self._check_page(page)
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength)) for p in levels)
        self.dimensions = self.level_dimensions[0]
        self.level_count = len(levels)
        width, height = self.dimensions
        self.level_downsamples = tuple((width / w + height / h) / 2 for w, h in self.level_dimensions)
        self.segment_shape = (int(self._page.chunks[-3]), int(self._page.chunks[-2]))
        self.properties = self._mpp_properties(self._tif, self._page)

    def _check_page(self, page: Any) -> None:
        if page.dtype != np.uint8:
            self.close()
            raise DataError(f"image {self.path}: {page.dtype} samples; large images are read as 8-bit RGB only")
        length, seg_width = int(page.chunks[-3]), int(page.chunks[-2])
        if length * seg_width > MAX_SEGMENT_PIXELS:
            self.close()
            raise DataError(
                f"image {self.path}: one {'tile' if page.is_tiled else 'strip'} holds {seg_width}x{length} pixels, "
                "too many to decode piecewise; re-save it tiled (e.g. `vips tiffsave in.tif out.tif --tile "
                "--pyramid`, or tifffile with tile=(256, 256))"
            )

    @staticmethod
    def _mpp_properties(tif: Any, page: Any) -> dict[str, str]:
        ome = _ome_mpp(tif.ome_metadata) if tif.is_ome else None
        if ome is not None:
            return {"openslide.mpp-x": repr(ome[0]), "openslide.mpp-y": repr(ome[1]), "ome.PhysicalSizeX": repr(ome[0])}
        unit = _MICRONS_PER_UNIT.get(int(page.resolutionunit))
        x_res, y_res = page.resolution
        if unit is None or not x_res or not y_res:
            return {}
        return {"openslide.mpp-x": repr(unit / x_res), "openslide.mpp-y": repr(unit / y_res),
                "tiff.XResolution": repr(float(x_res)), "tiff.ResolutionUnit": _UNIT_NAMES[unit]}  # fmt: skip

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (OpenSlide's rule)."""
        return max(k for k, ds in enumerate(self.level_downsamples) if ds <= max(downsample, 1.0) or k == 0)

    def _segment(self, level: int, index: int) -> tuple[np.ndarray, int, int]:
        """Segment ``index`` of ``level`` as ((h, w, 4) RGBA, top, left), from the cache or decoded."""
        key = (level, index)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            page = self._pages[level]
            handle = self._tif.filehandle
            handle.seek(page.dataoffsets[index])
            data = handle.read(page.databytecounts[index])
        segment, indices, _ = page.decode(data, index, jpegtables=page.jpegtables)
        if segment is None:
            raise DataError(f"image {self.path}: segment {index} of level {level} is missing from the file")
        entry = (_as_rgba(segment[0]), int(indices[2]), int(indices[3]))
        with self._lock:
            self.decoded_pixels += segment.shape[1] * segment.shape[2]
            self._cache[key] = entry
            self._cached_bytes += entry[0].nbytes
            while self._cached_bytes > SEGMENT_CACHE_BYTES and len(self._cache) > 1:
                _, (old, _, _) = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return entry

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """The RGBA region of ``size`` (w, h) pixels of ``level`` whose top-left corner is at level-0 ``location``
        (x, y), as OpenSlide returns it (opaque; transparent outside the image)."""
        if not 0 <= level < self.level_count:
            raise DataError(f"image {self.path}: level {level} does not exist (levels 0..{self.level_count - 1})")
        ds = self.level_downsamples[level]
        x, y = int(location[0] / ds), int(location[1] / ds)  # OpenSlide's rule: level-0 coordinates scaled down
        width, height = int(size[0]), int(size[1])
        out = np.zeros((height, width, 4), dtype=np.uint8)  # outside the image: transparent, as OpenSlide
        page = self._pages[level]
        length, seg_width = int(page.chunks[-3]), int(page.chunks[-2])
        level_width, level_height = self.level_dimensions[level]
        across = -(-level_width // seg_width)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, level_width), min(y + height, level_height)
        if x0 >= x1 or y0 >= y1:
            return Image.fromarray(out, "RGBA")
        for row in range(y0 // length, (y1 - 1) // length + 1):
            for col in range(x0 // seg_width, (x1 - 1) // seg_width + 1):
                index = row * across + col if page.is_tiled else row
                rgb, top, left = self._segment(level, index)
                sy0, sy1 = max(y0, top), min(y1, top + rgb.shape[0])
                sx0, sx1 = max(x0, left), min(x1, left + rgb.shape[1])
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = rgb[sy0 - top : sy1 - top, sx0 - left : sx1 - left]
        return Image.fromarray(out, "RGBA")

    def close(self) -> None:
        """Close the file and drop the cached segments."""
        self._cache.clear()
        self._cached_bytes = 0
        self._tif.close()


def _as_rgba(segment: np.ndarray) -> np.ndarray:
    """(h, w, samples) uint8 -> (h, w, 4): grey repeated, RGB made opaque, RGBA kept."""
    if segment.ndim == 2:
        segment = segment[..., None]
    samples = segment.shape[2]
    if samples == 1:
        rgb = np.repeat(segment, 3, axis=2)
    elif samples >= 3:
        rgb = segment[..., :3]
    else:
        raise DataError(f"a TIFF with {samples} samples per pixel is neither grey nor RGB")
    alpha = segment[..., 3:4] if samples >= 4 else np.full((*rgb.shape[:2], 1), 255, np.uint8)
    return np.concatenate([rgb, alpha], axis=2)


def image_dimensions(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image file from its header, without decoding pixels; None if unreadable."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(str(path)) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        except Exception:
            return None
    try:
        with Image.open(path) as img:
            return int(img.width), int(img.height)
    except Image.DecompressionBombError:  # PIL refuses to even open it; the header is all we read
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(path) as img:
                return int(img.width), int(img.height)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    except Exception:
        return None
