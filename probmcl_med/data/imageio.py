"""Reading pixels: image files through PIL and whole-slide regions through OpenSlide, with one-line errors.

Every reader returns RGB pixels of shape (H, W, 3): ``uint8`` for 8-bit files and slides; float32 in [0, 1] for
deeper images (16-bit, 12-bit stored in 16, float), scaled by the range the file states, never clipped and never
quantised to 8 bits (:func:`read_pixels`); :func:`read_image` gives the 8-bit version for display. A missing, truncated or corrupt file raises
:class:`~probmcl_med.errors.DataError` naming the file; the dataset adds the CSV row (see ``base.MultiLabelDataset``).

Slides are opened once per process and kept in a small cache keyed by the process id, so a DataLoader worker that
was forked from a parent holding open slides never shares the parent's file handles (OpenSlide handles are not
fork-safe) and a slide is not re-opened for every patch.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import openslide
import tifffile
from PIL import Image

from probmcl_med.errors import DataError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")
"""File endings that OpenSlide reads (used to tell a slide path from an image path in a manifest)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
"""Extensions listed as images in a folder (case-insensitive)."""


def image_files(folder: str | Path) -> list[Path]:
    """Files with an image extension (:data:`IMAGE_SUFFIXES`) directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def missing_path_hint(path: str | Path) -> str:
    """What to do about a path that does not exist, when its text says more: ``""`` or ``"; ..."``.

    A path with backslashes (``images\\a.png``, ``C:\\data\\a.png``) was written on Windows: elsewhere a
    backslash is part of the file's name, not a separator.
    """
    text = str(path)
    if "\\" not in text:
        return ""
    fixed = text.replace("\\", "/")
    return (
        f"; it looks like a Windows path (backslashes): write it with / instead, e.g. {fixed!r}, which works on "
        "every system"
    )


INTENSITY_MODES = ("dtype", "minmax")
"""How pixels deeper than 8 bits map onto [0, 1]: by the range the file states (else its type's), or per image."""

_PASS_THROUGH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""Pillow modes whose array keeps the file's full precision (converting them to RGB would clip at 255)."""


def read_pixels(path: str | Path, intensity: str = "dtype") -> np.ndarray:
    """Decode an image file to RGB pixels at the file's own precision: 8-bit files as uint8, deeper ones as float32.

    Args:
        path: PNG, JPEG, TIFF, BMP, ... anything PIL decodes. Grey, palette and RGBA images are converted to RGB
            (alpha is dropped). 16-bit PNGs (grey or RGB) are decoded at full depth with imagecodecs; TIFFs of more
            than 8 bits or of float samples with tifffile.
        intensity: ``dtype``: the range the file states maps onto [0, 1] (:func:`stated_range`: a PNG's ``sBIT``
            chunk, a TIFF's ``BitsPerSample`` or ``SMaxSampleValue`` / ``MaxSampleValue``), else its type's
            (uint16: 0-65535; signed integers: their whole range; float: 0-1, values outside are an error);
            ``minmax``: each image's own minimum and maximum map onto [0, 1].

    Returns:
        (H, W, 3): uint8 for an 8-bit file read with ``dtype``; else float32 ``(x - lo) / (hi - lo)`` in [0, 1],
        never clipped, never quantised (a 0-4095 gradient keeps its 4,096 levels).

    Raises:
        DataError: the file does not exist, is truncated or not an image, or its values do not fit ``intensity``.
    """
    path = Path(path)
    if intensity not in INTENSITY_MODES:
        raise DataError(f"intensity {intensity!r} for image {path}: use dtype or minmax")
    if not path.is_file():
        raise DataError(f"image {path} does not exist{missing_path_hint(path)}")
    try:
        pixels, top = _decode(path)
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"image {path} is too large to decode as one image ({exc}); read whole slides through the slides dataset"
        ) from None
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # every decoder's own error type (PIL, tifffile, imagecodecs): the file is bad
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"image {path} is truncated or corrupt ({detail}); replace it") from None
    return to_rgb(pixels, path, intensity, top)


def read_image(path: str | Path, intensity: str = "dtype") -> np.ndarray:
    """:func:`read_pixels` as 8-bit RGB (for display: overlays, thumbnails, stain fitting): deeper pixels are scaled
    to 0-255 and rounded, ``rint(255 (x - lo) / (hi - lo))``."""
    return to_uint8(read_pixels(path, intensity))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 as it is; float in [0, 1] -> ``rint(255 x)`` as uint8."""
    if pixels.dtype == np.uint8:
        return pixels
    return np.rint(np.clip(pixels.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def unit_range(pixels: np.ndarray) -> np.ndarray:
    """Pixels on the [0, 1] scale as float64: uint8 divided by 255, float kept."""
    values = pixels.astype(np.float64)
    return values / 255.0 if pixels.dtype == np.uint8 else values


def _decode(path: Path) -> tuple[np.ndarray, float | None]:
    """The file's pixels at full depth ((H, W) or (H, W, C) of the file's own dtype; 8-bit RGB for most files) and the
    largest value the file states its samples can take (:func:`stated_range`), or None."""
    if path.suffix.lower() in (".tif", ".tiff"):
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if page.dtype != np.uint8:
                pixels = page.asarray()
                pixels = np.moveaxis(pixels, 0, -1) if page.axes.startswith("S") else pixels
                return pixels, _tiff_top(page, pixels.dtype)
    with Image.open(path) as img:
        img.load()  # decodes fully: a truncated file fails here, not later in a worker
        if img.format == "PNG":
            depth, significant = png_bits(path)
            top = float(2**significant - 1) if significant is not None and significant < depth else None
            if depth == 16:  # Pillow reads 16-bit colour PNGs as 8-bit
                return imagecodecs.png_decode(path.read_bytes()), top
        if img.mode in _PASS_THROUGH_MODES:
            return np.asarray(img), None
        return np.asarray(img.convert("RGB"), dtype=np.uint8), None


def png_bits(path: Path) -> tuple[int, int | None]:
    """A PNG's bit depth (IHDR) and its significant bits (the largest entry of the ``sBIT`` chunk; None without one).

    Only the chunks before the image data are read (the PNG specification puts ``sBIT`` there).
    """
    with path.open("rb") as handle:
        data = handle.read(8)
        depth, significant = 8, None
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return depth, significant
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IDAT" or length > 1 << 24:
                return depth, significant
            data = handle.read(length + 4)[:length]
            if kind == b"IHDR" and len(data) >= 9:
                depth = data[8]
            elif kind == b"sBIT" and data:
                significant = max(data)


def _tiff_top(page: Any, dtype: np.dtype) -> float | None:
    """The largest sample value a TIFF page states: ``SMaxSampleValue`` (341) or ``MaxSampleValue`` (281), else
    ``2**BitsPerSample - 1`` when BitsPerSample is below its integer type's width (12-bit data); else None."""
    if not np.issubdtype(dtype, np.integer):
        return None
    for code in (341, 281):
        tag = page.tags.get(code)
        if tag is not None:
            value = np.max(np.asarray(tag.value, dtype=np.float64))
            if 0 < value < np.iinfo(dtype).max:
                return float(value)
    bits = page.bitspersample
    return float(2**bits - 1) if 0 < bits < np.iinfo(dtype).bits else None


def to_rgb(pixels: np.ndarray, path: str | Path, intensity: str = "dtype", top: float | None = None) -> np.ndarray:
    """(H, W), (H, W, 1-4) pixels of any numeric dtype -> (H, W, 3): uint8 kept (``dtype``), else float32 in [0, 1].

    Grey is repeated to three channels; a second (grey + alpha) or fourth (RGBA) channel is dropped. ``top``: the
    largest value the file states (:func:`read_pixels`); used when no pixel exceeds it (a file that shifted its
    12-bit samples into the high bits, as the PNG specification asks, exceeds 4095 and is read by its type's range).
    """
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2):
        pixels = pixels[..., 0]
    elif pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise DataError(f"image {path} has shape {pixels.shape}; expected a grey, RGB or RGBA image")
    if pixels.dtype == np.uint8 and intensity == "dtype":
        scaled: np.ndarray = pixels
    else:
        values = pixels.astype(np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"image {path} holds values that are not finite (NaN or infinity); fix or drop the file")
        lo, hi = _range(pixels, values, path, intensity, top)
        span = hi - lo
        scaled = ((values - lo) / span if span > 0 else np.zeros_like(values)).astype(np.float32)
    return np.repeat(scaled[..., None], 3, axis=2) if scaled.ndim == 2 else scaled


def _range(pixels: np.ndarray, values: np.ndarray, path: str | Path, intensity: str, top: float | None) -> tuple:
    """[lo, hi] of :func:`to_rgb`, by ``intensity``."""
    if intensity == "minmax":
        return float(values.min()), float(values.max())
    if pixels.dtype == np.bool_:
        return 0.0, 1.0
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        if top is not None and info.min == 0 and values.max() <= top:
            return 0.0, top
        return float(info.min), float(info.max)
    if values.min() < -1e-6 or values.max() > 1 + 1e-6:
        raise DataError(
            f"image {path} holds {pixels.dtype} values in [{values.min():g}, {values.max():g}], not in "
            "[0, 1]; set dataset.options.intensity=minmax to scale each image by its own range"
        )
    return 0.0, 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Whole slides
# ---------------------------------------------------------------------------------------------------------------------


class SlideCache:
    """Open OpenSlide handles of this process, least recently used closed first.

    The cache remembers the process id that filled it; in a forked child (a DataLoader worker) it starts empty, so
    each worker opens each slide once for itself.

    Args:
        max_open: slides kept open at once per process.
    """

    def __init__(self, max_open: int = 32) -> None:
        self.max_open = max_open
        self._pid = os.getpid()
        self._slides: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.opened = 0  # how many times a slide was opened in this process (tests check it stays small)

    def get(self, path: str | Path) -> Any:
        """The open ``openslide.OpenSlide`` for ``path`` (opened on first use in this process)."""
        key = str(path)
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
                self._slides = OrderedDict()
                self._pid = os.getpid()
                self.opened = 0
            slide = self._slides.get(key)
            if slide is not None:
                self._slides.move_to_end(key)
                return slide
            slide = open_slide(key)
            self.opened += 1
            self._slides[key] = slide
            while len(self._slides) > self.max_open:
                _, old = self._slides.popitem(last=False)
                old.close()
            return slide

    def clear(self) -> None:
        """Close every slide this process holds."""
        with self._lock:
            if self._pid == os.getpid():
                for slide in self._slides.values():
                    slide.close()
            self._slides = OrderedDict()
            self._pid = os.getpid()


SLIDES = SlideCache()
"""The per-process slide cache used by :func:`read_slide_region`."""


def open_slide(path: str | Path) -> Any:
    """Open a whole-slide image with OpenSlide (uncached; most code should go through :data:`SLIDES`).

    A TIFF that OpenSlide rejects (untiled) or reads with fewer levels than tifffile finds (a SubIFD or OME-TIFF
    pyramid) is read through tifffile instead (:class:`~probmcl_med.data.plaintiff.PlainTiff`, every level).

    Raises:
        DataError: the file is missing, or OpenSlide cannot read it (unsupported format, corrupt file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"slide {path} does not exist; check dataset.root and the slide paths in the manifest")
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        if path.suffix.lower() in (".tif", ".tiff"):  # a plain (untiled or single-level) TIFF: read piecewise
            from probmcl_med.data.plaintiff import PlainTiff

            return PlainTiff(path)
        raise DataError(
            f"slide {path} is not a format OpenSlide reads (SVS, tiled pyramidal TIFF, NDPI, MRXS, ...); "
            "convert it, e.g. to a tiled pyramidal TIFF"
        ) from None
    except openslide.OpenSlideError as exc:
        raise DataError(f"slide {path} cannot be read by OpenSlide ({exc}); the file may be corrupt") from None
    if path.suffix.lower() in (".tif", ".tiff") and tiff_levels(path) > slide.level_count:
        # a SubIFD or OME-TIFF pyramid: OpenSlide sees its level 0 only, tifffile every level
        from probmcl_med.data.plaintiff import PlainTiff

        slide.close()
        return PlainTiff(path)
    return slide


def tiff_levels(path: str | Path) -> int:
    """Levels of the pyramid in a TIFF's first series as tifffile reads it (SubIFDs, OME-TIFF); 0 if unreadable."""
    try:
        with tifffile.TiffFile(str(path)) as tif:
            return len(tif.series[0].levels)
    except Exception:  # not a TIFF tifffile parses
        return 0


def slide_location_check(slide: Any, path: str | Path, x: int, y: int, level: int, width: int, height: int) -> None:
    """Raise DataError unless the patch lies inside the slide at ``level``.

    Args:
        slide: an open OpenSlide.
        x, y: top-left corner in level-0 pixels (OpenSlide's convention).
        level: pyramid level the patch is read at.
        width, height: patch size in pixels of ``level``.
    """
    if not 0 <= level < slide.level_count:
        raise DataError(f"slide {path}: level {level} does not exist (the slide has levels 0..{slide.level_count - 1})")
    if width <= 0 or height <= 0:
        raise DataError(f"slide {path}: patch size {width}x{height} must be positive")
    w0, h0 = slide.dimensions
    ds = float(slide.level_downsamples[level])
    right, bottom = x + width * ds, y + height * ds
    if x < 0 or y < 0 or right > w0 + 0.5 * ds or bottom > h0 + 0.5 * ds:
        raise DataError(
            f"slide {path}: patch x={x}, y={y}, {width}x{height} at level {level} (downsample {ds:g}) lies outside "
            f"the slide ({w0}x{h0} at level 0)"
        )


def patch_size(size: Any) -> tuple[int, int]:
    """``size`` as (width, height): an int is a square side; a pair is (width, height)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    width, height = size
    return int(width), int(height)


def read_slide_region(location: dict[str, Any], cache: SlideCache | None = None) -> np.ndarray:
    """Read one patch of a whole slide through OpenSlide.

    Args:
        location: ``{"path", "x", "y", "level", "size"}``: x, y in level-0 pixels; ``size`` an int or (w, h) in
            pixels of ``level`` (default level 0); optional ``out_size`` (int or (w, h)): the region is resized to it
            (bilinear, antialiased by PIL), e.g. to reach a requested microns per pixel.
        cache: slide cache (default: the process-wide :data:`SLIDES`).

    Returns:
        (h, w, 3) uint8 RGB (a :class:`SlidePatch` carrying ``location``); transparent slide background (alpha 0
        outside scanned areas) becomes white.

    Raises:
        DataError: unreadable slide, or a location outside the slide.
    """
    path = location["path"]
    level = int(location.get("level", 0))
    width, height = patch_size(location["size"])
    x, y = int(location["x"]), int(location["y"])
    slide = (cache or SLIDES).get(path)
    slide_location_check(slide, path, x, y, level, width, height)
    try:
        region = slide.read_region((x, y), level, (width, height))
    except DataError:
        raise
    except Exception as exc:  # openslide.OpenSlideError: a corrupt tile deep inside the file
        raise DataError(f"slide {path}: reading x={x}, y={y} at level {level} failed ({exc})") from None
    out_size = location.get("out_size")
    if out_size is not None and patch_size(out_size) != (width, height):  # read at a level, resized to a given mpp
        region = region.resize(patch_size(out_size), Image.Resampling.BILINEAR)
    pixels = rgba_to_rgb(np.asarray(region)).view(SlidePatch)
    pixels.location = dict(location)
    return pixels


class SlidePatch(np.ndarray):
    """(h, w, 3) uint8 pixels read from a slide that carry ``location``, the dict they were read from, so that a
    per-slide transform (stain normalisation fitted on the slide, :mod:`probmcl_med.data.stain`) knows their slide.
    Anything else sees a plain array (``np.asarray`` drops the subclass)."""

    location: dict[str, Any] | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.location = getattr(obj, "location", None)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA (not premultiplied, as OpenSlide returns) composited onto white -> (H, W, 3) uint8.

    Fully opaque input (the usual case) returns a view of the RGB channels without copying.
    """
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgba[..., :3]  # a view: the (H, W, C) -> (C, H, W) copy in NormalizeImaged is the only copy
    a = alpha[..., None].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def read_any(image: Any, intensity: str = "dtype") -> np.ndarray:
    """Pixels of a dataset item's ``image``: a path, a slide-location dict, or an array already.

    Returns (H, W, 3) uint8, or float32 in [0, 1] for deep images (``intensity`` applies to image files,
    :func:`read_pixels`); slides are 8-bit RGB. An array is taken as it is when it is (H, W) or (H, W, 3) uint8 or
    float32 (grey repeated to RGB).
    """
    if isinstance(image, dict):
        return read_slide_region(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.float32):
            raise DataError(
                f"in-memory image of shape {image.shape} and dtype {image.dtype}: expected (H, W, 3) uint8, or "
                "float32 in [0, 1]"
            )
        return image
    return read_pixels(image, intensity)
