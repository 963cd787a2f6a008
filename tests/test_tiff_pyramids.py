"""SubIFD and OME-TIFF pyramids (issue 21.5): OpenSlide sees their level 0 only; every level is read through
tifffile, patch for patch equal to the arrays written and to tifffile's own decoding of the level."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile
from test_inference import cli, make_bundle

from probmcl_med.data.imageio import SLIDES, open_slide, read_slide_region
from probmcl_med.data.mpp import declared_mpp, plan_mpp
from probmcl_med.data.plaintiff import PlainTiff
from probmcl_med.inference.inputs import is_slide


def _image() -> np.ndarray:
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1024, 0:768]
    image = np.stack([(x // 4) % 256, (y // 4) % 256, ((x + y) // 8) % 256], axis=-1)
    return np.clip(image + rng.integers(0, 6, image.shape), 0, 255).astype(np.uint8)


def write_subifd(path, image, ome: bool, tile: tuple[int, int] | None = (256, 256)):
    """A 3-level pyramid with the reduced levels as SubIFDs of level 0 (level k = image[::2**k, ::2**k])."""
    strips = {} if tile else {"rowsperstrip": 32}
    with tifffile.TiffWriter(path, ome=ome) as tw:
        extra = ({"metadata": {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeYUnit": "µm"}} if ome else
                 {"metadata": None, "resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"})  # fmt: skip
        tw.write(image, tile=tile, photometric="rgb", subifds=2, compression="zlib", **strips, **extra)
        for k in (1, 2):
            tw.write(np.ascontiguousarray(image[:: 2**k, :: 2**k]), tile=tile, photometric="rgb", subfiletype=1,
                     compression="zlib", **strips)  # fmt: skip
    return path


@pytest.mark.parametrize(("name", "ome"), [("subifd.tif", False), ("pyramid.ome.tif", True)])
def test_every_level_matches_the_written_arrays(tmp_path, name, ome):
    image = _image()
    path = write_subifd(tmp_path / name, image, ome)
    assert openslide.OpenSlide(str(path)).level_count == 1  # what OpenSlide alone sees
    reader = open_slide(path)
    assert isinstance(reader, PlainTiff) and reader.level_count == 3
    assert reader.level_dimensions == ((768, 1024), (384, 512), (192, 256))
    assert reader.level_downsamples == (1.0, 2.0, 4.0)
    declared = declared_mpp(reader)
    assert declared.value == pytest.approx(0.25 if ome else 0.5)
    assert ("OME-XML PhysicalSizeX" if ome else "TIFF resolution tag") in declared.source
    with tifffile.TiffFile(path) as tif:
        decoded = [tif.series[0].levels[k].asarray() for k in range(3)]
    for level, x, y, size in [(0, 300, 200, 300), (1, 100, 640, 96), (2, 400, 500, 64), (2, 0, 0, 192)]:
        f = 2**level
        patch = np.asarray(read_slide_region({"path": str(path), "x": x, "y": y, "level": level, "size": size}))
        expected = image[::f, ::f][y // f : y // f + size, x // f : x // f + size]
        np.testing.assert_array_equal(patch, expected)
        np.testing.assert_array_equal(patch, decoded[level][y // f : y // f + size, x // f : x // f + size])
    plan = plan_mpp(reader, path, 1.0, 64)
    assert plan.level == (2 if ome else 1)
    SLIDES.clear()


def test_a_stripped_subifd_pyramid_is_a_slide_and_predicts_at_its_levels(tmp_path):
    image = _image()
    path = write_subifd(tmp_path / "stripped.tif", image, ome=False, tile=None)
    assert openslide.OpenSlide.detect_format(str(path)) is None and is_slide(path)
    make_bundle(tmp_path / "run")
    assert cli(["predict", str(path), "-c", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--mpp", "2",
                "--tissue-threshold", "0", "--device", "cpu"]) == 0  # fmt: skip
    resolution = json.loads((tmp_path / "out" / "meta.json").read_text())["slide"]["resolution"]
    assert (resolution["level"], resolution["slide_mpp"], resolution["read_size"]) == (2, 0.5, 32)
    SLIDES.clear()
