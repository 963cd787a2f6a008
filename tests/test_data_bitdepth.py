"""Images deeper than 8 bits (16-bit and 12-bit-in-16 PNG and TIFF, float TIFF) are scaled, not clipped.

Each expected image is computed here from the array the test wrote, with numpy; the files are written by other
libraries (a hand-made PNG encoder below, Pillow, tifffile), so the reader is checked against an independent decode.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from probmcl_med.data.imageio import read_image
from probmcl_med.errors import DataError


def _write_png16(path, pixels: np.ndarray) -> None:
    """A minimal 16-bit PNG encoder (greyscale (H, W) or RGB (H, W, 3)), from the PNG specification, not a library."""
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.ndim == 2 else 2
    rows = pixels.reshape(height, -1).astype(">u2").tobytes()
    stride = len(rows) // height
    raw = b"".join(b"\x00" + rows[r * stride : (r + 1) * stride] for r in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _by_dtype(values: np.ndarray, top: float) -> np.ndarray:
    """Expected 8-bit pixels: the dtype's range [0, top] onto [0, 255], rounded to nearest, grey repeated to RGB."""
    out = np.rint(values.astype(np.float64) * 255.0 / top).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out


def _gradient12(height: int = 8, width: int = 512) -> np.ndarray:
    """A 12-bit horizontal gradient 0..4095 stored in uint16 (what a 12-bit camera exports)."""
    return np.tile(np.linspace(0, 4095, width).round().astype(np.uint16), (height, 1))


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    pixels = np.tile(np.linspace(0, 65535, 300).round().astype(np.uint16), (4, 1))
    path = tmp_path / "grey16.png"
    _write_png16(path, pixels)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (4, 300, 3)
    np.testing.assert_array_equal(out, _by_dtype(pixels, 65535))
    assert len(np.unique(out)) == 256  # a full-range gradient keeps every 8-bit level


def test_16bit_grey_png_written_by_pillow(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (16, 20), dtype=np.uint16)
    path = tmp_path / "pil16.png"
    Image.fromarray(pixels).save(path)
    np.testing.assert_array_equal(read_image(path), _by_dtype(pixels, 65535))


def test_16bit_rgb_png(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 65536, (12, 10, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    _write_png16(path, pixels)
    np.testing.assert_array_equal(read_image(path), _by_dtype(pixels, 65535))


def test_12bit_gradient_in_16bit_png_by_dtype_and_minmax(tmp_path):
    pixels = _gradient12()
    path = tmp_path / "grad12.png"
    _write_png16(path, pixels)
    by_dtype = read_image(path)
    np.testing.assert_array_equal(by_dtype, _by_dtype(pixels, 65535))
    assert (by_dtype == 255).mean() == 0  # the old reader clipped it: 94 % white
    stretched = read_image(path, intensity="minmax")
    expected = np.rint((pixels - 0.0) * 255.0 / 4095.0).astype(np.uint8)
    np.testing.assert_array_equal(stretched[..., 0], expected)
    assert len(np.unique(stretched)) == 256 and (stretched == 255).mean() < 0.01


@pytest.mark.parametrize("planar", [False, True])
def test_16bit_rgb_tiff(tmp_path, planar):
    pixels = np.random.default_rng(2).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.tif"
    if planar:
        tifffile.imwrite(path, np.moveaxis(pixels, 2, 0), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(path, pixels, photometric="rgb")
    np.testing.assert_array_equal(read_image(path), _by_dtype(pixels, 65535))


def test_float_tiff_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(3)
    grey = rng.random((7, 9)).astype(np.float32)
    rgb = rng.random((7, 9, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.tif"), _by_dtype(grey, 1.0))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), _by_dtype(rgb, 1.0))


def test_float_tiff_outside_unit_range_is_an_error_unless_minmax(tmp_path):
    values = np.linspace(-100.0, 3000.0, 60, dtype=np.float32).reshape(6, 10)  # e.g. Hounsfield units
    path = tmp_path / "ct.tif"
    tifffile.imwrite(path, values)
    with pytest.raises(DataError) as err:
        read_image(path)
    message = str(err.value)
    assert "\n" not in message and "ct.tif" in message and "intensity=minmax" in message
    expected = np.rint((values.astype(np.float64) + 100.0) * 255.0 / 3100.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path, intensity="minmax")[..., 1], expected)


def test_nan_in_a_float_image_is_an_error(tmp_path):
    values = np.zeros((4, 4), np.float32)
    values[1, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", values)
    with pytest.raises(DataError, match="not finite"):
        read_image(tmp_path / "nan.tif", intensity="minmax")


def test_8bit_images_unchanged(tmp_path):
    pixels = np.random.default_rng(4).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", pixels, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), pixels)
    grey = pixels[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(grey[..., None], 3, axis=2))


def test_unknown_intensity_mode_is_an_error(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="dtype or minmax"):
        read_image(tmp_path / "a.png", intensity="auto")


def test_csv_dataset_passes_the_intensity_option_to_the_loader(tmp_path):
    from probmcl_med import DATASETS
    from probmcl_med.data import build_eval_transform

    pixels = _gradient12(16, 16)
    (tmp_path / "images").mkdir()
    _write_png16(tmp_path / "images" / "a.png", pixels)
    (tmp_path / "labels.csv").write_text("image,tumour,split\nimages/a.png,1,train\n")
    for intensity, top in (("dtype", 65535.0), ("minmax", 4095.0)):
        ds = DATASETS.get("csv")(str(tmp_path), "train", intensity=intensity)
        ds.transform = build_eval_transform(16, None, None)
        item = ds[0]
        assert set(item) >= {"image", "label"} and "intensity" not in item
        expected = pixels.astype(np.float64) / top  # the network input keeps every level (no 8-bit rounding)
        np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
