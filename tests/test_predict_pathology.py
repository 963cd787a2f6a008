"""predict for pathology: slides at a model's mpp with QuPath GeoJSON, the stain reference from model.pt, large
plain TIFFs tiled with bounded memory; training records mpp and stain reference in model.pt."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import geojson
import numpy as np
import pytest
import tifffile
from PIL import Image
from shapely.geometry import shape
from slide_files import write_pyramidal_tiff
from test_data_stain import MACENKO_HE, beer_lambert
from test_inference import CLASSES, SIZE, cli, error_line, hand_probs_of_arrays, make_bundle, read_csv, write_images

from probmcl_med.bundle import read_checkpoint, save_torch
from probmcl_med.data.imageio import SLIDES
from probmcl_med.data.stain import fit_reference, normalize_stains


def set_bundle_entries(run: Path, **entries) -> None:
    """Write extra entries (mpp, stain_reference) into a saved model.pt, as training does."""
    data = read_checkpoint(run / "model.pt")
    data.update(entries)
    save_torch(run / "model.pt", data)


def tissue_slide(path: Path, mpp: float | None) -> np.ndarray:
    """A 2048 x 2048, 3-level pyramid: white glass, a pink-purple noisy block at x 1024-2047, y 512-1535."""
    rng = np.random.default_rng(5)
    image = np.full((2048, 2048, 3), 243, np.uint8)
    block = np.array([200, 95, 165]) + rng.normal(0, 20, (1024, 1024, 3))
    image[512:1536, 1024:2048] = np.clip(block, 0, 255).astype(np.uint8)
    write_pyramidal_tiff(path, image, levels=3, tile=256, compression="zlib", mpp=mpp)
    return image


def test_slide_at_the_models_mpp_with_qupath_geojson(tmp_path, capsys):
    encoder, head = make_bundle(tmp_path / "run")
    set_bundle_entries(tmp_path / "run", mpp=1.0)  # the model saw 1 um/px: 32 px = 32 um = 128 px at 0.25 um/px
    image = tissue_slide(tmp_path / "slide.tif", mpp=0.25)
    out = tmp_path / "out"
    assert cli(["predict", str(tmp_path / "slide.tif"), "-c", str(tmp_path / "run"), "-o", str(out),
                "--device", "cpu"]) == 0  # fmt: skip
    assert "at 1 um/px, read from level 2" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())["slide"]
    assert meta["mpp"] == {"mpp": 1.0, "slide_mpp": 0.25, "slide_mpp_source": "openslide.mpp-x (from the TIFF "
                           "resolution tag, 40000 px per centimeter)", "level": 2, "level_mpp": 1.0, "size": 32,
                           "read_size": 32}  # fmt: skip
    _, rows = read_csv(out / "patches.csv")
    coords = [(int(r[0]), int(r[1])) for r in rows]
    assert set(coords) == {(x, y) for x in range(1024, 2048, 128) for y in range(512, 1536, 128)}
    assert all(r[2] == "2" and r[3] == "32" for r in rows)
    level2 = image[::4, ::4]  # the pyramid's level 2, as written
    crops = [level2[y // 4 : y // 4 + 32, x // 4 : x // 4 + 32] for x, y in coords]
    probs = np.array([[float(v) for v in r[5:8]] for r in rows])
    np.testing.assert_allclose(probs, hand_probs_of_arrays(encoder, head, crops), rtol=1e-5, atol=1e-6)
    # the GeoJSON, read back with the geojson and shapely libraries
    collection = geojson.loads((out / "predictions.geojson").read_text())
    assert collection.is_valid and len(collection["features"]) == len(rows)
    for (x, y), row, feature in zip(coords, rows, collection["features"], strict=True):
        assert shape(feature["geometry"]).bounds == (x, y, x + 128, y + 128)  # level-0 pixels
        measured = feature["properties"]["measurements"]
        assert [measured[f"p({c})"] for c in CLASSES] == pytest.approx([float(v) for v in row[5:8]], rel=1e-6)
        probs_row = [float(v) for v in row[5:8]]
        called = [c for c in row[8].split("|") if c]  # one classification: the most probable called class
        expected_class = max(called, key=lambda c: probs_row[CLASSES.index(c)]) if called else ""
        assert feature["properties"].get("classification", {}).get("name", "") == expected_class
        assert ": " not in expected_class and feature["properties"]["predicted"] == called
    SLIDES.clear()


def test_slide_without_mpp_needs_slide_mpp(tmp_path, capsys):
    make_bundle(tmp_path / "run")
    set_bundle_entries(tmp_path / "run", mpp=1.0)
    tissue_slide(tmp_path / "bare.tif", mpp=None)
    args = ["predict", str(tmp_path / "bare.tif"), "-c", str(tmp_path / "run"), "--device", "cpu"]
    assert cli([*args, "-o", str(tmp_path / "a")]) == 1
    line = error_line(capsys)
    assert "bare.tif records no microns per pixel" in line and "--slide-mpp" in line
    assert not (tmp_path / "a").exists()
    assert cli([*args, "-o", str(tmp_path / "b"), "--slide-mpp", "0.5"]) == 0  # 1 um/px: level 1, 32 px
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["slide"]["mpp"]["level"] == 1
    assert cli([*args, "-o", str(tmp_path / "c"), "--level", "2", "--patch-size", "64"]) == 0  # level pixels
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["slide"]["mpp"] is None
    assert cli([*args, "-o", str(tmp_path / "d"), "--level", "1", "--mpp", "0.5"]) == 1
    assert "not both" in error_line(capsys)
    SLIDES.clear()


def test_stain_reference_in_model_pt_is_applied_before_the_model(tmp_path):
    encoder, head = make_bundle(tmp_path / "run")
    reference_rgb, _ = beer_lambert(MACENKO_HE, side=64, seed=1)
    Image.fromarray(reference_rgb).save(tmp_path / "reference.png")
    reference = fit_reference(tmp_path / "reference.png")
    set_bundle_entries(tmp_path / "run", stain_reference=reference.to_dict())
    folder = tmp_path / "he"
    folder.mkdir()
    other = np.array([[0.70, 0.25], [0.65, 0.90], [0.30, 0.35]])
    arrays = [beer_lambert(other, side=SIZE, seed=s, scale=(0.8, 1.4))[0] for s in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i}.png")
    assert cli(["predict", str(folder), "-c", str(tmp_path / "run"), "-o", str(tmp_path / "out"),
                "--device", "cpu"]) == 0  # fmt: skip
    _, rows = read_csv(tmp_path / "out" / "predictions.csv")
    got = np.array([[float(v) for v in r[1:]] for r in rows])
    normalised = [normalize_stains(a, reference) for a in arrays]
    np.testing.assert_allclose(got, hand_probs_of_arrays(encoder, head, normalised), rtol=1e-5, atol=1e-6)
    assert np.abs(got - hand_probs_of_arrays(encoder, head, arrays)).max() > 1e-3  # the reference did matter


def test_large_plain_tiff_is_tiled_and_never_decoded_whole(tmp_path, monkeypatch, capsys):
    import probmcl_med.data.plaintiff as plaintiff
    import probmcl_med.data.tiling as slides
    from probmcl_med.bundle import load_model_bundle
    from probmcl_med.inference import input_kind, predict_slide

    monkeypatch.setattr(plaintiff, "SEGMENT_CACHE_BYTES", 8 * 1024 * 1024)  # 21 strips: a 256-row patch fits
    monkeypatch.setattr(slides, "THUMBNAIL_READ_PIXELS", 1024 * 1024)
    height, width = 4000, 6000  # 72 MB of RGB, stored as 16-row deflate strips (OpenSlide cannot read it)
    rng = np.random.default_rng(0)
    image = np.full((height, width, 3), 240, np.uint8)
    image[1024:3072, 2048:4864] = np.clip(np.array([190, 90, 160]) + rng.normal(0, 15, (2048, 2816, 3)), 0, 255)
    path = tmp_path / "export.tif"
    tifffile.imwrite(path, image, rowsperstrip=16, compression="zlib", photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")  # fmt: skip
    del image
    assert input_kind(path) == "image" and input_kind(path, large_pixels=10_000_000) == "slide"
    make_bundle(tmp_path / "run")
    bundle = load_model_bundle(tmp_path / "run")
    predict_slide(
        bundle, path, mpp=32.0, tissue_threshold=0.0, device="cpu"
    )  # warm-up: the lazy imports are not the image's memory
    SLIDES.clear()
    tracemalloc.start()
    predictions = predict_slide(bundle, path, mpp=4.0, device="cpu", batch_size=64)  # 32 px = 128 um = 256 px
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    coords = {(row["x"], row["y"]) for row in predictions.ids}
    assert coords == {(x, y) for x in range(2048, 4864, 256) for y in range(1024, 3072, 256)}
    reader = SLIDES.get(str(path))
    assert isinstance(reader, plaintiff.PlainTiff)
    # traced (numpy and Python) allocations stay within the strip cache plus a few RGBA copies of one band
    bound = plaintiff.SEGMENT_CACHE_BYTES + 4 * 4 * slides.THUMBNAIL_READ_PIXELS + 8 * 1024 * 1024
    assert peak < bound < height * width * 3 / 2  # under half the 72 MB of RGB a whole decode would take
    assert reader.decoded_pixels <= 2.2 * height * width  # about one pass for the thumbnail, one for the patches
    SLIDES.clear()
    assert cli(["predict", str(path), "-c", str(tmp_path / "run"), "-o", str(tmp_path / "out"), "--mpp", "16",
                "--tile-above", "10", "--device", "cpu"]) == 0  # fmt: skip
    assert (tmp_path / "out" / "predictions.geojson").is_file()
    write_images(tmp_path / "png", 1, size=(120, 100))
    assert cli(["predict", str(tmp_path / "png" / "img_000.png"), "-c", str(tmp_path / "run"), "-o",
                str(tmp_path / "out2"), "--tile-above", "0.01", "--device", "cpu"]) == 1  # fmt: skip
    assert "img_000.png is 100x120 pixels" in error_line(capsys)
    SLIDES.clear()


def test_training_records_mpp_and_stain_reference(tmp_path):
    from test_train import tiny_config

    from probmcl_med.engine import train

    reference_rgb, _ = beer_lambert(MACENKO_HE, side=64, seed=1)
    Image.fromarray(reference_rgb).save(tmp_path / "reference.png")
    config = tiny_config(tmp_path, "mode=asl", "epochs=1", "dataset.mpp=0.5",
                         f"dataset.stain_normalize={tmp_path / 'reference.png'}")  # fmt: skip
    train(config)
    raw = read_checkpoint(tmp_path / "run" / "model.pt")
    assert raw["mpp"] == 0.5
    assert raw["stain_reference"] == fit_reference(tmp_path / "reference.png").to_dict()
    from probmcl_med.cli.info import checkpoint_info

    info = checkpoint_info(tmp_path / "run")
    assert info["mpp"] == 0.5 and info["stain_reference"]["source"] == str(tmp_path / "reference.png")
