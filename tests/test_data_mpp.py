"""Microns per pixel: patches cover the same tissue whatever the scanner's level-0 resolution; plain large TIFFs.

The synthetic slides carry a physical ruler: red = x / 2 and green = y / 2 with x, y in microns, so the value of a
pixel says where on the glass it is, independent of how the slide was scanned (tifffile writes them; OpenSlide reads
the resolution tags as ``openslide.mpp-x``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from slide_files import write_pyramidal_tiff

from probmcl_med import DATASETS
from probmcl_med.data.imageio import SLIDES, read_slide_region
from probmcl_med.data.mpp import plan_mpp
from probmcl_med.data.plaintiff import PlainTiff
from probmcl_med.data.tiling import slide_thumbnail, tile_slide
from probmcl_med.errors import DataError

FIELD_UM = 500.0  # the ruler covers 500 x 500 microns (red and green 0..250)


def ruler(mpp: float) -> np.ndarray:
    """(H, W, 3) uint8 image of FIELD_UM microns at ``mpp``: R = x_um / 2, G = y_um / 2 (pixel centres), B = 128."""
    n = round(FIELD_UM / mpp)
    centres = (np.arange(n) + 0.5) * mpp
    r = np.broadcast_to(centres[None, :] / 2, (n, n))
    g = np.broadcast_to(centres[:, None] / 2, (n, n))
    return np.stack([r, g, np.full((n, n), 128.0)], axis=-1).round().astype(np.uint8)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """The same ruler 'scanned' at 0.25, 0.4 and 0.3 um/px (3, 3, 2 levels); the last one without resolution tags."""
    folder = tmp_path_factory.mktemp("mpp")
    out = {}
    for mpp, levels, tags in ((0.25, 3, True), (0.4, 3, True), (0.3, 2, False)):
        out[mpp] = write_pyramidal_tiff(folder / f"scan_{mpp}.tif", ruler(mpp), levels=levels, tile=128,
                                        compression="zlib", mpp=mpp if tags else None)  # fmt: skip
    yield out
    SLIDES.clear()


def _physical_x(patch: np.ndarray) -> np.ndarray:
    return patch[..., 0].astype(np.float64).mean(axis=0) * 2  # microns, per column


@pytest.mark.parametrize(("scan", "level", "read"), [(0.25, 1, 224), (0.4, 0, 280)])
def test_a_224_px_patch_at_half_a_micron_covers_112_um(scans, scan, level, read):
    path = scans[scan]
    slide = openslide.OpenSlide(str(path))
    plan = plan_mpp(slide, path, 0.5, 224)
    assert (plan.level, plan.read_size, plan.slide_mpp) == (level, read, pytest.approx(scan))
    x0_um, y0_um = 100.0, 60.0
    location = {"path": str(path), "x": round(x0_um / scan), "y": round(y0_um / scan), "level": plan.level,
                "size": plan.read_size, "out_size": 224}  # fmt: skip
    patch = read_slide_region(location)
    assert patch.shape == (224, 224, 3)
    x_um = _physical_x(patch)[2:-2]  # the outermost columns mix in the clamped border of the resampling filter
    columns = np.arange(2, 222)
    slope, intercept = np.polyfit(columns, x_um, 1)
    assert slope * 224 == pytest.approx(112.0, rel=0.01)  # microns covered by the patch
    assert intercept == pytest.approx(x0_um + 0.25, abs=1.5)  # first column's centre, 0.5 um wide
    expected = x0_um + (columns + 0.5) * 0.5
    assert np.abs(x_um - expected).max() <= 2.5  # the ruler's own rounding is 1 um


def test_slides_dataset_reads_the_same_tissue_on_every_scanner(tmp_path, scans):
    rows = [f"{scans[m]},{round(150 / m)},{round(200 / m)},a" for m in (0.25, 0.4)]
    (tmp_path / "manifest.csv").write_text("slide,x,y,labels\n" + "\n".join(rows) + "\n")
    ds = DATASETS.get("slides")(str(tmp_path), "train", size=224, mpp=0.5, valid_fraction=0, test_fraction=0)
    a, b = (read_slide_region(item["image"]).astype(int) for item in ds.items)
    assert ds.items[0]["image"]["level"] == 1 and ds.items[1]["image"]["level"] == 0
    assert np.abs(a - b)[2:-2, 2:-2].max() <= 2
    (tmp_path / "manifest.csv").write_text(f"slide,x,y,level,labels\n{scans[0.25]},0,0,0,a\n")
    with pytest.raises(DataError, match=r"a 'level' column and dataset.options.mpp=0.5 both choose"):
        DATASETS.get("slides")(str(tmp_path), "train", mpp=0.5, valid_fraction=0, test_fraction=0)


def test_slide_without_mpp_names_the_file_and_the_option(scans):
    path = scans[0.3]
    slide = openslide.OpenSlide(str(path))
    with pytest.raises(DataError) as err:
        plan_mpp(slide, path, 0.5, 224)
    message = str(err.value)
    assert "\n" not in message and "scan_0.3.tif" in message and "--slide-mpp" in message
    plan = plan_mpp(slide, path, 0.5, 224, slide_mpp_override=0.3)
    assert (plan.level, plan.read_size) == (0, round(224 * 0.5 / 0.3))
    upsampled = plan_mpp(slide, path, 0.2, 100, slide_mpp_override=0.3)  # finer than the scan: level 0, upsampled
    assert (upsampled.level, upsampled.read_size) == (0, 67)


def test_tiler_at_an_mpp_lists_the_same_physical_grid_on_both_scans(scans):
    grids = {m: tile_slide(scans[m], 112, tissue_threshold=0.0, mpp=1.0) for m in (0.25, 0.4)}
    for m, grid in grids.items():
        physical = {(round(loc["x"] * m), round(loc["y"] * m)) for loc in grid.locations}
        assert physical == {(x, y) for x in range(0, 389, 112) for y in range(0, 389, 112)}  # 112-um steps
        assert all(loc["out_size"] == 112 for loc in grid.locations)
        assert grid.extent * m == pytest.approx(112.0, rel=0.01)
    assert grids[0.25].level == 2 and grids[0.4].level == 1


# ---------------------------------------------------------------------------------------------------------------------
# Plain (untiled, single-level) TIFFs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A 1500 x 2200 stripped (16 rows per strip) and a 64-px-tiled single-page TIFF, both deflate-compressed."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1500, 2200, 3), dtype=np.uint8)
    folder = tmp_path_factory.mktemp("plain")
    stripped, tiled = folder / "export.tif", folder / "tiled.tif"
    tifffile.imwrite(stripped, image, rowsperstrip=16, compression="zlib", photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")  # fmt: skip
    tifffile.imwrite(tiled, image, tile=(64, 64), compression="zlib", photometric="rgb")
    return image, stripped, tiled


@pytest.mark.parametrize(("x", "y", "w", "h"), [(0, 0, 10, 10), (1000, 333, 224, 224), (2190, 1490, 10, 10)])
def test_plain_tiff_regions_match_the_array_and_decode_only_their_segments(plain, x, y, w, h):
    image, stripped, tiled = plain
    assert openslide.OpenSlide.detect_format(str(stripped)) is None  # OpenSlide does not read it
    reader = PlainTiff(stripped)
    assert reader.properties["openslide.mpp-x"] == repr(0.5)
    region = np.asarray(reader.read_region((x, y), 0, (w, h)))
    np.testing.assert_array_equal(region[..., :3], image[y : y + h, x : x + w])
    assert (region[..., 3] == 255).all()
    crossed = range(y // 16, (y + h - 1) // 16 + 1)
    assert reader.decoded_pixels == sum(min(16, 1500 - 16 * s) for s in crossed) * 2200  # only the strips crossed
    tiles = PlainTiff(tiled)
    region = np.asarray(tiles.read_region((x, y), 0, (w, h)))[..., :3]
    np.testing.assert_array_equal(region, image[y : y + h, x : x + w])
    across, down = (x + w - 1) // 64 - x // 64 + 1, (y + h - 1) // 64 - y // 64 + 1
    assert tiles.decoded_pixels == across * down * 64 * 64  # only the tiles the region overlaps


def test_plain_tiff_as_a_slide_with_a_bounded_thumbnail(plain, monkeypatch):
    import probmcl_med.data.tiling as slides

    image, stripped, _ = plain
    monkeypatch.setattr(slides, "THUMBNAIL_READ_PIXELS", 300 * 300)  # forces banded reading of this small file
    reader = SLIDES.get(str(stripped))
    assert isinstance(reader, PlainTiff)
    thumb = slide_thumbnail(reader, 220)
    assert thumb.shape == (150, 220, 3)
    block = image[:1500, :2200].reshape(150, 10, 220, 10, 3).mean(axis=(1, 3))  # the 10x10 block means
    assert np.abs(thumb.astype(float) - block).mean() < 12  # bilinear-antialiased vs box: close, not equal
    grid = tile_slide(stripped, 224, tissue_threshold=0.0, mpp=1.0)
    assert grid.mpp_plan.level == 0 and grid.mpp_plan.read_size == 448
    SLIDES.clear()


def test_one_strip_too_large_is_refused_with_a_fix(tmp_path, monkeypatch):
    import probmcl_med.data.plaintiff as plaintiff

    path = tmp_path / "onestrip.tif"
    tifffile.imwrite(path, np.zeros((200, 300, 3), np.uint8), rowsperstrip=200, photometric="rgb")
    monkeypatch.setattr(plaintiff, "MAX_SEGMENT_PIXELS", 10_000)
    with pytest.raises(DataError, match=r"onestrip\.tif: one strip holds 300x200 pixels.*re-save it tiled"):
        PlainTiff(path)
    with pytest.raises(DataError, match=r"not a readable TIFF"):
        PlainTiff(Path(__file__))
