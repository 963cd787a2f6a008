"""Slides through OpenSlide: patch pixels against the array written with tifffile, manifests, bad input, the tiler."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import torch
from slide_files import cmu_slide, write_pyramidal_tiff

from probmcl_med import DATASETS
from probmcl_med.data import build_eval_transform, make_loader
from probmcl_med.data.imageio import SLIDES, SlideCache, open_slide, read_slide_region
from probmcl_med.data.tiling import tile_slide
from probmcl_med.data.tissue import otsu_threshold
from probmcl_med.errors import DataError

torch.set_num_threads(1)
SIDE = 2048


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 2048 x 2048, 3-level, 256-px-tiled uncompressed TIFF of smooth gradients plus noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIDE, 0:SIDE]
    image = np.stack([(x // 8) % 256, (y // 8) % 256, ((x + y) // 16) % 256], axis=-1).astype(np.uint8)
    image = (image + rng.integers(0, 8, image.shape)).astype(np.uint8)
    path = tmp_path_factory.mktemp("slides") / "pyramid.tif"
    write_pyramidal_tiff(path, image, levels=3, tile=256)
    return path, image


def test_openslide_sees_the_pyramid(pyramid):
    path, _ = pyramid
    slide = openslide.OpenSlide(str(path))
    assert slide.level_count == 3
    assert slide.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512))
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("x", "y", "level", "size"), [(0, 0, 0, 64), (1000, 300, 0, 100), (512, 256, 1, 128), (1024, 1536, 2, 64)]
)
def test_patch_pixels_match_the_written_array(pyramid, x, y, level, size):
    path, image = pyramid
    patch = read_slide_region({"path": str(path), "x": x, "y": y, "level": level, "size": size})
    f = 2**level
    expected = image[::f, ::f][y // f : y // f + size, x // f : x // f + size]
    np.testing.assert_array_equal(patch, expected)


def test_slide_opened_once_per_process(pyramid):
    path, _ = pyramid
    cache = SlideCache()
    for i in range(10):
        read_slide_region({"path": str(path), "x": 64 * i, "y": 0, "level": 0, "size": 32}, cache=cache)
    assert cache.opened == 1


def _manifest(tmp_path, pyramid_path, rows, name="manifest.csv"):
    header = "slide,x,y,level,size,labels,split\n"
    (tmp_path / name).write_text(header + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return tmp_path


def test_manifest_dataset_through_dataloader_workers(tmp_path, pyramid):
    path, image = pyramid
    rows = [(str(path), 64 * i, 128 * i, 0, 48, "tumour|stroma" if i % 2 else "stroma", "train") for i in range(6)]
    rows.append((str(path), 0, 0, 1, 48, "necrosis", "test"))
    root = _manifest(tmp_path, path, rows)
    ds = DATASETS.get("slides")(str(root), "train")
    assert ds.class_names == ["necrosis", "stroma", "tumour"] and len(ds) == 6
    np.testing.assert_array_equal(ds.labels[:2], [[0, 1, 0], [0, 1, 1]])
    ds.transform = build_eval_transform(48, None, None)
    got = torch.cat([b["image"] for b in make_loader(ds, batch_size=2, workers=2)])
    expected = np.stack([image[128 * i : 128 * i + 48, 64 * i : 64 * i + 48] for i in range(6)])
    np.testing.assert_allclose(got.numpy(), expected.transpose(0, 3, 1, 2) / 255.0, atol=1e-6)


def test_json_manifest_with_class_columns(tmp_path, pyramid):
    path, _ = pyramid
    records = [
        {"path": str(path), "x": 0, "y": 0, "tumour": 1, "stroma": 0},
        {"path": str(path), "x": 256, "y": 0, "tumour": 0, "stroma": 1},
    ]
    (tmp_path / "patches.json").write_text(json.dumps({"patches": records}))
    ds = DATASETS.get("slides")(
        str(tmp_path), "train", manifest="patches.json", size=32, valid_fraction=0, test_fraction=0
    )
    assert ds.class_names == ["tumour", "stroma"] and ds.labels.tolist() == [[1, 0], [0, 1]]
    assert ds.items[0]["image"]["size"] == 32


def test_location_outside_the_slide_names_the_manifest_row(tmp_path, pyramid):
    path, _ = pyramid
    root = _manifest(
        tmp_path, path, [(str(path), 0, 0, 0, 64, "a", "train"), (str(path), 2000, 0, 0, 64, "a", "train")]
    )
    with pytest.raises(DataError) as err:
        DATASETS.get("slides")(str(root), "train")
    message = str(err.value)
    assert "\n" not in message and "manifest.csv, row 1 (line 3)" in message and "outside" in message
    ds = DATASETS.get("slides")(str(root), "train", skip_bad=True)
    assert len(ds) == 1 and ds.num_skipped == 1
    with pytest.raises(DataError, match="level 5 does not exist"):
        read_slide_region({"path": str(path), "x": 0, "y": 0, "level": 5, "size": 8})


def test_unreadable_slide(tmp_path):
    fake = tmp_path / "broken.svs"
    fake.write_bytes(b"not a slide" * 100)
    with pytest.raises(DataError) as err:
        open_slide(fake)
    assert "broken.svs" in str(err.value) and "\n" not in str(err.value)
    root = _manifest(tmp_path, fake, [(str(fake), 0, 0, 0, 64, "a", "train")])
    with pytest.raises(DataError, match=r"manifest.csv, row 0 \(line 2\): slide .*broken.svs"):
        DATASETS.get("slides")(str(root), "train")


def test_missing_manifest_column(tmp_path, pyramid):
    path, _ = pyramid
    (tmp_path / "manifest.csv").write_text(f"slide,x,labels\n{path},0,a\n")
    with pytest.raises(DataError, match=r"no 'y' column .* columns found: slide, x, labels"):
        DATASETS.get("slides")(str(tmp_path), "train")


def test_otsu_matches_exhaustive_search():
    rng = np.random.default_rng(1)
    values = np.clip(np.concatenate([rng.normal(0.1, 0.03, 3000), rng.normal(0.6, 0.08, 1000)]), 0, 1)
    best, best_var = None, -1.0
    for t in np.linspace(0, 1, 257)[1:-1]:  # explicit between-class variance at every bin edge
        lo, hi = values[values < t], values[values >= t]
        if len(lo) == 0 or len(hi) == 0:
            continue
        var = len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2
        if var > best_var:
            best, best_var = t, var
    assert abs(otsu_threshold(values) - best) <= 1 / 256 + 1e-9


def test_tiler_keeps_exactly_the_tissue_block(tmp_path):
    image = np.full((1024, 1024, 3), 244, dtype=np.uint8)  # white glass
    image[256:768, 512:1024] = (200, 90, 160)  # a pink-purple "tissue" block
    path = write_pyramidal_tiff(tmp_path / "block.tif", image, levels=2, tile=256)
    grid = tile_slide(path, 128, level=0, tissue_threshold=0.5)
    got = {(loc["x"], loc["y"]) for loc in grid.locations}
    expected = {(x, y) for x in range(512, 1024, 128) for y in range(256, 768, 128)}
    assert got == expected and grid.candidates == 64
    assert all(loc["tissue_fraction"] > 0.95 for loc in grid.locations)
    level1 = tile_slide(path, 64, level=1, tissue_threshold=0.5)
    assert {(loc["x"], loc["y"]) for loc in level1.locations} == expected  # same places, in level-0 pixels
    assert len(tile_slide(path, 128, tissue_threshold=0).locations) == 64


def test_real_slide_tissue_found_background_skipped():
    REAL_SLIDE = cmu_slide()
    grid = tile_slide(REAL_SLIDE, 224, tissue_threshold=0.5)
    assert 0 < len(grid.locations) < grid.candidates
    assert 0.1 < grid.mask.mean() < 0.7
    everything = tile_slide(REAL_SLIDE, 224, tissue_threshold=0.0).locations
    kept = {(loc["x"], loc["y"]) for loc in grid.locations}
    dropped = [loc for loc in everything if (loc["x"], loc["y"]) not in kept]

    def brightness_and_saturation(loc):
        rgb = read_slide_region({"path": str(REAL_SLIDE), **{k: loc[k] for k in ("x", "y", "level", "size")}}).astype(
            float
        )
        sat = (rgb.max(2) - rgb.min(2)) / np.maximum(rgb.max(2), 1)
        return rgb.mean(), sat.mean()

    kept_stats = np.array([brightness_and_saturation(loc) for loc in grid.locations])
    background = [loc for loc in dropped if loc["tissue_fraction"] < 0.05]
    assert background, "the slide has glass on both sides of the tissue"
    back_stats = np.array([brightness_and_saturation(loc) for loc in background])
    assert back_stats[:, 0].min() > 200 and back_stats[:, 1].max() < 0.1  # glass: bright, grey
    assert kept_stats[:, 1].mean() > 3 * back_stats[:, 1].mean()
    # the left edge of this crop is glass, the middle is tissue
    assert all(loc["x"] > 224 for loc in grid.locations)
    SLIDES.clear()


def _child_opens(path_and_parent_id):
    path, parent_id = path_and_parent_id
    slide = SLIDES.get(path)
    return SLIDES.opened, id(slide) != parent_id


def test_forked_worker_opens_its_own_handle(pyramid):
    import multiprocessing as mp

    path, _ = pyramid
    parent = SLIDES.get(str(path))
    with mp.get_context("fork").Pool(1) as pool:
        opened, fresh = pool.map(_child_opens, [(str(path), id(parent))])[0]
    assert opened == 1 and fresh
    assert SLIDES.get(str(path)) is parent  # the parent keeps its own
