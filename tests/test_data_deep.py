"""Deep images stay deep: the bit depth a file states is read, and float precision survives decoding, resizing,
augmentation and normalisation to the network input (issue 24 item 13).

The files are written by other libraries (Pillow with an ``sBIT`` chunk, imagecodecs, tifffile with
``MaxSampleValue`` / ``SMaxSampleValue``); every expectation is computed here with numpy from the array written.
"""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps, PngImagePlugin

from probmcl_med import DATASETS
from probmcl_med.data.augment import AutoContrast, Equalize, Sharpness, build_policy
from probmcl_med.data.imageio import png_bits, read_image, read_pixels
from probmcl_med.data.transforms import build_eval_transform, build_train_transform

MEAN, STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


def gradient4096() -> np.ndarray:
    """Every 12-bit level once: 0..4095 as a 64 x 64 uint16 image."""
    return np.arange(4096, dtype=np.uint16).reshape(64, 64)


def write_png16(path, pixels: np.ndarray, significant_bits: int | None = None) -> None:
    """A 16-bit greyscale PNG written by Pillow, with an sBIT chunk when ``significant_bits`` is given."""
    info = PngImagePlugin.PngInfo()
    if significant_bits is not None:
        info.add(b"sBIT", bytes([significant_bits]))
    Image.fromarray(pixels).save(path, pnginfo=info)


def network_levels(x: np.ndarray, top: float) -> np.ndarray:
    """A normalised (3, H, W) input back on the file's integer scale: ``(x * std + mean) * top``."""
    return (x * np.asarray(STD)[:, None, None] + np.asarray(MEAN)[:, None, None]) * top


def test_png_sbit_12_keeps_all_4096_levels_to_the_network_input(tmp_path):
    pixels = gradient4096()
    write_png16(tmp_path / "a.png", pixels, significant_bits=12)
    assert png_bits(tmp_path / "a.png") == (16, 12)
    read = read_pixels(tmp_path / "a.png")
    assert read.dtype == np.float32 and read.shape == (64, 64, 3)
    np.testing.assert_allclose(read[..., 0], pixels / 4095.0, rtol=0, atol=1e-7)
    for transform in (
        build_eval_transform(64, MEAN, STD),
        build_train_transform(64, MEAN, STD, policy="flip", hflip=False, vflip=False, seed=0),
    ):
        x = transform({"image": str(tmp_path / "a.png"), "label": [1.0]})["image"].numpy()
        levels = network_levels(x.astype(np.float64), 4095.0)
        assert np.abs(levels - pixels[None]).max() < 1e-2  # within float32 tolerance of the exact level
        assert len(np.unique(np.rint(levels[0]))) == 4096


def test_png_without_sbit_is_read_by_its_type_and_still_keeps_every_level(tmp_path):
    pixels = gradient4096()
    write_png16(tmp_path / "a.png", pixels)
    read = read_pixels(tmp_path / "a.png")
    np.testing.assert_allclose(read[..., 1], pixels / 65535.0, rtol=0, atol=1e-7)
    x = build_eval_transform(64, MEAN, STD)({"image": str(tmp_path / "a.png")})["image"].numpy()
    assert len(np.unique(np.rint(network_levels(x.astype(np.float64), 65535.0)[2]))) == 4096
    assert len(np.unique(read_image(tmp_path / "a.png"))) == 17  # the old 8-bit path: what the issue measured


def test_sbit_with_samples_shifted_to_16_bits_follows_the_png_specification(tmp_path):
    pixels = gradient4096() << 4  # the specification's way: 12 significant bits in the high bits
    write_png16(tmp_path / "a.png", pixels, significant_bits=12)
    np.testing.assert_allclose(read_pixels(tmp_path / "a.png")[..., 0], pixels / 65535.0, rtol=0, atol=1e-7)


def test_rgb16_png_from_imagecodecs(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(pixels))
    np.testing.assert_allclose(read_pixels(tmp_path / "a.png"), pixels / 65535.0, rtol=0, atol=1e-7)


@pytest.mark.parametrize("tag", [281, 341])
def test_tiff_max_sample_value_states_the_range(tmp_path, tag):
    pixels = gradient4096()
    tifffile.imwrite(tmp_path / "a.tif", pixels, extratags=[(tag, "H", 1, 4095, False)])
    np.testing.assert_allclose(read_pixels(tmp_path / "a.tif")[..., 2], pixels / 4095.0, rtol=0, atol=1e-7)
    tifffile.imwrite(tmp_path / "b.tif", pixels)  # no tag: the type's range
    np.testing.assert_allclose(read_pixels(tmp_path / "b.tif")[..., 2], pixels / 65535.0, rtol=0, atol=1e-7)


def test_a_stated_maximum_that_the_data_exceed_is_not_trusted(tmp_path):
    pixels = gradient4096() * 2  # up to 8190, above the stated 4095
    tifffile.imwrite(tmp_path / "a.tif", pixels, extratags=[(281, "H", 1, 4095, False)])
    np.testing.assert_allclose(read_pixels(tmp_path / "a.tif")[..., 0], pixels / 65535.0, rtol=0, atol=1e-7)


def test_eight_bit_files_stay_uint8(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = read_pixels(tmp_path / "a.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, pixels)


# --------------------------------------------------------------------------------------------------------------------
# Augmentation in float
# --------------------------------------------------------------------------------------------------------------------

EIGHT_BIT = np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8)


def test_float_equalize_is_pil_s_equalize_on_8_bit_levels():
    expected = np.asarray(ImageOps.equalize(Image.fromarray(EIGHT_BIT))) / 255.0
    out = Equalize(p=1.0).apply(EIGHT_BIT.astype(np.float32) / 255.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_float_autocontrast_stretches_each_channel_exactly():
    rng = np.random.default_rng(3)
    image = (0.2 + 0.3 * rng.random((16, 16, 3))).astype(np.float32)
    out = AutoContrast(p=1.0).apply(image)
    for c in range(3):
        channel = image[..., c].astype(np.float64)
        expected = (channel - channel.min()) / (channel.max() - channel.min())
        np.testing.assert_allclose(out[..., c], expected, rtol=0, atol=1e-6)
    assert len(np.unique(out)) > 256  # not 8-bit levels


def test_float_sharpness_matches_the_8_bit_one_before_rounding():
    for factor in (0.1, 1.9):
        eight = Sharpness(factor).apply(EIGHT_BIT).astype(np.float64)
        deep = Sharpness(factor).apply(EIGHT_BIT.astype(np.float32) / 255.0).astype(np.float64) * 255.0
        assert np.abs(deep - eight).max() <= 0.5 + 1e-3  # the 8-bit one rounds; the float one does not


@pytest.mark.parametrize("policy", ["flip", "randaugment", "pathology"])
def test_every_policy_keeps_float_pixels_float_and_in_range(policy):
    pipeline = build_policy(policy, num_ops=2, magnitude=9, hflip=True, vflip=True)
    image = gradient4096().astype(np.float32)[..., None].repeat(3, axis=2) / 4095.0
    for seed in range(12):
        pipeline.set_random_seed(seed)
        out = pipeline(image=image)["image"]
        assert out.dtype == np.float32 and out.shape == image.shape
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_deep_csv_dataset_to_the_network_input(tmp_path):
    (tmp_path / "images").mkdir()
    write_png16(tmp_path / "images" / "a.png", gradient4096(), significant_bits=12)
    (tmp_path / "labels.csv").write_text("image,tumour,split\nimages/a.png,1,train\n")
    ds = DATASETS.get("csv")(str(tmp_path), "train")
    ds.transform = build_train_transform(64, MEAN, STD, policy="flip", seed=0)
    x = ds[0]["image"].numpy().astype(np.float64)
    levels = np.rint(network_levels(x, 4095.0))
    assert len(np.unique(levels)) == 4096 and levels.min() == 0 and levels.max() == 4095
