"""Blank slides are a result (issue 21.2); the tissue mask leaves out pen ink and specks and keeps real tissue, and
``--mask`` restricts prediction to a region (issue 21.3)."""

from __future__ import annotations

import json

import geojson
import numpy as np
import openslide
import pytest
from PIL import Image, ImageDraw
from shapely.geometry import Point, shape
from slide_files import cmu_slide, write_pyramidal_tiff
from test_inference import cli, error_line, make_bundle, read_csv

from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.regions import rasterize, read_features
from probmcl_med.data.tiling import grid_fractions, slide_thumbnail, tile_slide
from probmcl_med.data.tissue import saturation, tissue_mask

# Marker inks as their transmission per channel (the colour of a stroke on white glass / 255): Sharpie-like blue,
# dark blue, green, teal-green, olive green, black and a dark grey-violet black.
INKS = {
    "blue": (40, 80, 180),
    "dark blue": (25, 55, 140),
    "green": (40, 150, 90),
    "teal": (20, 120, 110),
    "olive": (70, 140, 50),
    "black": (35, 35, 40),
    "violet black": (55, 45, 65),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tissue") / "run"
    make_bundle(folder)
    return folder


@pytest.mark.parametrize("kind", ["white", "grey noise", "colour noise"])
def test_a_blank_slide_is_a_result_with_empty_outputs(tmp_path, run, capsys, kind):
    rng = np.random.default_rng(0)
    if kind == "white":
        image = np.full((1024, 1024, 3), 245, np.uint8)
    elif kind == "grey noise":
        image = np.repeat(np.clip(rng.normal(200, 25, (1024, 1024, 1)), 0, 255), 3, axis=2).astype(np.uint8)
    else:  # independent noise per channel: saturated specks, no tissue
        image = np.clip(rng.normal(200, 15, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    slide = write_pyramidal_tiff(tmp_path / "blank.tif", image, levels=2, mpp=0.5)
    out = tmp_path / "out"
    assert cli(["predict", str(slide), "-c", str(run), "-o", str(out), "--patch-size", "128", "--device",
                "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "no tissue found on" in printed and len([ln for ln in printed.splitlines() if "no tissue" in ln]) == 1
    header, rows = read_csv(out / "patches.csv")
    assert header[:5] == ["x", "y", "level", "size", "tissue_fraction"] and rows == []
    collection = geojson.loads((out / "predictions.geojson").read_text())
    assert collection.is_valid and collection["type"] == "FeatureCollection" and collection["features"] == []
    meta = json.loads((out / "meta.json").read_text())
    assert meta["slide"]["status"] == "no tissue found" and meta["num_inputs"] == 0
    stats = meta["slide"]["tissue_mask"]
    assert stats["tissue_pixels"] == 0 and stats["thumbnail"] == [1024, 1024]
    SLIDES.clear()


def test_tissue_without_a_patch_reaching_the_fraction_keeps_its_hint(tmp_path, run, capsys):
    image = np.full((1024, 1024, 3), 245, np.uint8)
    image[100:200, 100:200] = (190, 80, 160)  # tissue, smaller than a patch
    slide = write_pyramidal_tiff(tmp_path / "small.tif", image, levels=1, mpp=0.5)
    assert cli(["predict", str(slide), "-c", str(run), "-o", str(tmp_path / "out"), "--patch-size", "256",
                "--tissue-threshold", "0.9", "--device", "cpu"]) == 1  # fmt: skip
    line = error_line(capsys)
    assert "reaches the tissue fraction 0.9" in line and "lower --tissue-threshold" in line
    SLIDES.clear()


def _cmu_region() -> np.ndarray:
    """The CMU slide's 1024-pixel thumbnail (what the mask is computed on): glass around a skin section."""
    return slide_thumbnail(openslide.OpenSlide(str(cmu_slide())), 1024)


def _strokes(shape_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """One thick freehand-like stroke per ink, as (h, w) bool masks, across glass and tissue."""
    h, w = shape_hw
    out = {}
    for k, name in enumerate(INKS):
        canvas = Image.new("1", (w, h), 0)
        y = 60 + k * (h - 120) // len(INKS)
        points = [(x, y + 25 * np.sin(x / 60.0 + k)) for x in range(20, w - 20, 10)]
        ImageDraw.Draw(canvas).line(points, fill=1, width=14)
        out[name] = np.asarray(canvas, dtype=bool)
    return out


def test_pen_ink_of_known_marker_colours_is_left_out_and_tissue_kept():
    clean = _cmu_region()
    before = tissue_mask(clean).mask
    assert 0.2 < before.mean() < 0.8  # the crop has glass and tissue
    inked = clean.astype(np.float64)
    strokes = _strokes(clean.shape[:2])
    for name, stroke in strokes.items():
        transmission = np.asarray(INKS[name], dtype=np.float64) / 255.0  # ink over tissue absorbs on top of it
        inked[stroke] *= transmission
    inked = np.clip(np.rint(inked), 0, 255).astype(np.uint8)
    ink = np.logical_or.reduce(list(strokes.values()))
    sat = saturation(inked)
    assert (sat[ink] > 0.1).mean() > 0.85, "coloured ink passes a saturation-only mask (what the issue found)"
    after = tissue_mask(inked).mask
    for name, stroke in strokes.items():
        assert after[stroke].mean() < 0.05, f"{name} ink kept as tissue: {after[stroke].mean():.1%}"
    away = ~ndimage_dilate(ink, 8)  # away from the strokes the mask is the clean image's
    assert (after[away] == before[away]).mean() > 0.98


def ndimage_dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=pixels)


def test_the_cmu_crops_tissue_is_kept():
    path = cmu_slide()
    grid = tile_slide(path, 224, tissue_threshold=0.5)
    coloured = saturation(grid.thumbnail) > grid.tissue.threshold  # the saturation-only mask of before
    kept = grid.tissue.mask
    assert kept[coloured].mean() > 0.9 and not kept[~coloured].any()
    (width, height), (sx, sy) = grid.dimensions, grid.downsample
    xs, ys = np.arange(0, width - 223.5, 224), np.arange(0, height - 223.5, 224)
    before = grid_fractions(coloured, xs / sx, ys / sy, 224 / sx, 224 / sy)
    now = {(round(loc["x"]), round(loc["y"])) for loc in grid.locations}
    old = {(round(xs[i]), round(ys[j])) for j, i in zip(*np.nonzero(before >= 0.5), strict=True)}
    solid = {(round(xs[i]), round(ys[j])) for j, i in zip(*np.nonzero(before >= 0.9), strict=True)}
    assert now <= old and len(now) >= 0.9 * len(old) and solid <= now
    SLIDES.clear()


def test_rasterised_polygons_match_shapely_point_in_polygon(tmp_path):
    ring = [(30.0, 20.0), (400.0, 60.0), (350.0, 380.0), (80.0, 300.0), (30.0, 20.0)]
    hole = [(150.0, 150.0), (250.0, 150.0), (250.0, 250.0), (150.0, 250.0), (150.0, 150.0)]
    grid = rasterize([[ring, hole]], (50, 60), (8.0, 8.0))
    polygon = shape({"type": "Polygon", "coordinates": [ring, hole]})
    expected = np.array([[polygon.contains(Point((c + 0.5) * 8, (r + 0.5) * 8)) for c in range(60)] for r in range(50)])
    boundary = np.array(
        [[polygon.exterior.distance(Point((c + 0.5) * 8, (r + 0.5) * 8)) < 8 or
          polygon.interiors[0].distance(Point((c + 0.5) * 8, (r + 0.5) * 8)) < 8 for c in range(60)]
         for r in range(50)]
    )  # fmt: skip
    assert (grid == expected)[~boundary].all()  # pixels a grid step or more from an edge agree exactly
    assert (grid != expected).mean() < 0.03


def test_predict_mask_restricts_patches_to_a_geojson_region_or_a_mask_image(tmp_path, run):
    image = np.full((1024, 1024, 3), 245, np.uint8)
    image[256:768, 256:768] = (190, 80, 160)
    slide = write_pyramidal_tiff(tmp_path / "s.tif", image, levels=1, mpp=0.5)
    # QuPath-style export: the left half of the tissue block, in level-0 pixels
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [512, 0], [512, 1024],
               [0, 1024], [0, 0]]]}, "properties": {"objectType": "annotation"}}  # fmt: skip
    (tmp_path / "region.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    assert len(read_features(tmp_path / "region.geojson")) == 1
    picture = np.zeros((256, 256), np.uint8)
    picture[:, :128] = 255  # the same region as a quarter-resolution binary image
    Image.fromarray(picture).save(tmp_path / "region.png")
    got = {}
    for name in ("region.geojson", "region.png"):
        out = tmp_path / name.replace(".", "_")
        assert cli(["predict", str(slide), "-c", str(run), "-o", str(out), "--patch-size", "128", "--mask",
                    str(tmp_path / name), "--device", "cpu"]) == 0  # fmt: skip
        got[name] = {(int(r[0]), int(r[1])) for r in read_csv(out / "patches.csv")[1]}
    expected = {(x, y) for x in (256, 384) for y in range(256, 768, 128)}
    assert got["region.geojson"] == expected == got["region.png"]
    SLIDES.clear()
